"""payworker's own periodic duties, which one worker per queue runs for all of them (the
worker layer's leader, worker/leader.py): the sweep, which publishes due retries and
abandoned events again, and the expiry of kept card tokens. Neither is a Celery task: a
task every few seconds would crowd the payments operators look for out of Flower.

Also the tasks of older versions, kept so that messages they queued still work:
`payworker.redrive` (resume one event) and `payworker.sweep` (one sweep pass)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any, Protocol

from celery import Celery
from sqlalchemy import Connection, Engine

from core.settings import Settings
from core.signing import KeyRing, signed_headers
from db import sweeps
from db.ledger import now
from tasks.base import REDRIVE_HEADER, AuthenticatedTask, LedgerTask
from tasks.logs import EventLog
from tasks.sweeper import Redrive, SweepReport, sweep
from tasks.telemetry import Telemetry

REDRIVE_TASK = "payworker.redrive"
SWEEP_TASK = "payworker.sweep"

# Kept card tokens are few (events waiting for their customer, dead card events), and
# erasing one a minute past its TTL changes nothing: once a minute is enough.
TOKEN_EXPIRY_SECONDS = 60.0


def redrive_publisher(
    celery_app: Celery, queue: str, producer: Any, keys: KeyRing | None
) -> Callable[[Redrive], None]:
    """Publishes re-drives on `queue`: the event's own payment task, marked as a re-drive,
    signed with the first of `keys` (PAYWORKER_MESSAGE_KEYS) when there are any."""

    def publish(target: Redrive) -> None:
        signature = signed_headers(keys, target.task_name, target.kwargs)
        celery_app.send_task(
            target.task_name,
            kwargs=target.kwargs,
            queue=queue,
            producer=producer,
            headers={REDRIVE_HEADER: True, **signature},
        )

    return publish


def sweep_in(celery_app: Celery, settings: Settings, conn: Connection) -> SweepReport:
    """One sweep pass in the caller's transaction on `conn`."""
    with celery_app.producer_or_acquire() as producer:
        publish = redrive_publisher(celery_app, settings.queue, producer, settings.message_keyring)
        return sweep(
            conn, publish, queue=settings.queue, grace_seconds=settings.redrive_after_seconds
        )


def run_sweep(celery_app: Celery, settings: Settings, engine: Engine) -> SweepReport:
    """One sweep pass in a transaction of its own (`payworker sweep`)."""
    with engine.begin() as conn:
        return sweep_in(celery_app, settings, conn)


class Duty(Protocol):
    """A periodic duty: one leader runs it every `period` seconds."""

    @property
    def name(self) -> str: ...

    @property
    def period(self) -> float: ...

    def run(self, conn: Connection) -> dict[str, Any]:
        """One run in the caller's transaction; returns what it did (JSON)."""
        ...


class SweepDuty:
    """Publish the re-drive of every due or abandoned event of the queue."""

    name = "sweep"

    def __init__(self, celery_app: Celery, settings: Settings, telemetry: Telemetry) -> None:
        self._app, self._settings, self._telemetry = celery_app, settings, telemetry
        self.period = settings.sweep_seconds

    def run(self, conn: Connection) -> dict[str, Any]:
        report = sweep_in(self._app, self._settings, conn)
        for reason, count in report.reasons.items():
            self._telemetry.redriven(reason, count)
        if report.redriven:
            EventLog().info("sweep", redriven=len(report.redriven), **dict(report.reasons))
        return {"redriven": len(report.redriven), **report.reasons}


class TokenExpiryDuty:
    """Erase the card tokens kept past PAYWORKER_SEALED_TOKEN_TTL_HOURS (and any kept by
    an event that ended without dying)."""

    name = "token_expiry"
    period = TOKEN_EXPIRY_SECONDS

    def __init__(self, settings: Settings) -> None:
        self._queue = settings.queue
        self._ttl = timedelta(hours=settings.sealed_token_ttl_hours)

    def run(self, conn: Connection) -> dict[str, Any]:
        erased = sweeps.erase_sealed_tokens(conn, self._queue, now() - self._ttl)
        if erased:
            EventLog().info("sealed card tokens erased", erased=erased)
        return {"erased": erased}


def periodic_duties(celery_app: Celery, settings: Settings, telemetry: Telemetry) -> list[Duty]:
    """The duties a queue's leader runs."""
    return [SweepDuty(celery_app, settings, telemetry), TokenExpiryDuty(settings)]


class SweepTask(AuthenticatedTask):
    """`payworker.sweep`, as older versions' beat published it: one sweep pass."""

    abstract = True

    def sweep(self) -> dict[str, Any]:
        res = self.resources.get()
        with res.engine.begin() as conn:
            return SweepDuty(self.app, res.settings, res.telemetry).run(conn)


class RedriveTask(LedgerTask):
    """`payworker.redrive(event_id)`, as older versions published re-drives."""

    abstract = True
