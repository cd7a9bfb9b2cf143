"""What the task layer reports as it works: the metrics sink it is handed at start-up.

The worker layer implements it with Prometheus counters (worker/metrics.py); tests and
tools that count nothing pass `NoTelemetry`. Every method must be quick and thread-safe."""

from __future__ import annotations

from typing import Protocol


class Telemetry(Protocol):
    def event_finished(self, message_type: str, status: str, age_seconds: float) -> None:
        """An event reached a final status `age_seconds` after its first receipt."""

    def retry_scheduled(self, message_type: str, reason: str) -> None:
        """A retry was scheduled in the ledger; `reason` is an error code."""

    def redriven(self, reason: str, count: int) -> None:
        """The sweeper published `count` events again for `reason`."""

    def stripe_request(
        self, method: str, endpoint: str, status: int | None, seconds: float
    ) -> None:
        """One Stripe HTTP request ended (`status` None: no answer)."""

    def message_refused(self, task: str, reason: str) -> None:
        """A message of `task` was refused as not authenticated, for `reason`."""

    def charge_outcome(self, api: str, outcome: str) -> None:
        """A charge through `api` (payment_intents | charges) ended `outcome` (succeeded,
        failed, canceled) or began to wait for its customer (action_required)."""


class NoTelemetry:
    """Counts nothing."""

    def event_finished(self, message_type: str, status: str, age_seconds: float) -> None:
        pass

    def retry_scheduled(self, message_type: str, reason: str) -> None:
        pass

    def redriven(self, reason: str, count: int) -> None:
        pass

    def stripe_request(
        self, method: str, endpoint: str, status: int | None, seconds: float
    ) -> None:
        pass

    def message_refused(self, task: str, reason: str) -> None:
        pass

    def charge_outcome(self, api: str, outcome: str) -> None:
        pass
