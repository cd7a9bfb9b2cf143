"""The HTTP layer under the Stripe SDK. Every request, the SDK's own network retries
included, first takes a slot from the shared rate limiter; a 429 slows every worker down;
an observer sees each request's method, path template, status and duration.

Apart from tasks/gateway.py, this is the only module that imports `stripe`: it extends the
SDK's HTTP client, the gateway decides everything else."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import stripe

from core.errors import RunOutOfTime
from tasks.ratelimit import Limiter

logger = logging.getLogger("payworker")

# (method, path template, HTTP status or None when no answer arrived, seconds on the wire).
# The rate-limit wait is not part of the seconds.
Observer = Callable[[str, str, int | None, float], None]

# Stripe ids (cus_NffrFeUfNV2Hib, card_1Mv…) carry digits or capitals; resource names
# (customers, payment_methods) never do.
_ID_LIKE = re.compile(r"[0-9A-Z]")
_VERSION = re.compile(r"v[0-9]+")

_run = threading.local()


def path_template(url: str) -> str:
    """The URL's path with ids replaced: /v1/customers/cus_1/sources/card_2 ->
    /v1/customers/{id}/sources/{id}. The one place ids are normalised (metric labels)."""
    segments = urlsplit(url).path.split("/")
    return "/".join(
        "{id}" if _ID_LIKE.search(seg) and not _VERSION.fullmatch(seg) else seg for seg in segments
    )


def set_run_deadline(deadline: float | None) -> None:
    """Bound the Stripe requests of the task run on this thread: none starts unless its full
    timeout fits before `deadline` (a time.monotonic() value; None: unbounded). Celery's
    thread pool cannot interrupt a task, so this is its soft time limit at the Stripe
    boundary; under prefork it only fires a little before the real one would."""
    _run.deadline = deadline


def run_deadline() -> float | None:
    deadline: float | None = getattr(_run, "deadline", None)
    return deadline


class LimitedRequestsClient(stripe.RequestsClient):
    """`stripe.RequestsClient` that waits for a rate-limit slot before each request.

    The SDK calls `request` once per attempt, so its retries wait for a slot too. The
    requests session is per thread (the parent class keeps it in a thread-local)."""

    def __init__(
        self,
        *,
        timeout: float,
        limiter: Limiter | None = None,
        observer: Observer | None = None,
    ) -> None:
        super().__init__(timeout=timeout)
        self.call_timeout = timeout
        self.limiter = limiter
        self.observer = observer

    def request(  # type: ignore[override]  # narrows the return type, as RequestsClient does
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        post_data: Any = None,
        *,
        _usage: list[str] | None = None,
    ) -> tuple[bytes, int, Mapping[str, str]]:
        return self._limited(super().request, method, url, headers, post_data)

    def request_stream(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        post_data: Any = None,
        *,
        _usage: list[str] | None = None,
    ) -> tuple[Any, int, Mapping[str, str]]:
        return self._limited(super().request_stream, method, url, headers, post_data)

    def _limited(
        self,
        send: Callable[..., tuple[Any, int, Mapping[str, str]]],
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        post_data: Any,
    ) -> tuple[Any, int, Mapping[str, str]]:
        """Wait for a rate-limit slot, send, and report the request to the observer."""
        self._wait_for_slot()
        started = time.monotonic()
        status = None
        try:
            content, status, rheaders = send(method, url, headers, post_data)
        finally:
            self._done(method, url, status, time.monotonic() - started)
        return content, status, rheaders

    def _wait_for_slot(self) -> None:
        """Raises RunOutOfTime, or RateLimitedLocally when no slot comes in time."""
        budget = None
        deadline = run_deadline()
        if deadline is not None:
            budget = deadline - time.monotonic() - self.call_timeout
            if budget < 0:
                raise RunOutOfTime(
                    "no time left in this run for another Stripe request"
                    f" ({self.call_timeout:.1f}s timeout)"
                )
        if self.limiter is not None:
            self.limiter.acquire(budget)

    def _done(self, method: str, url: str, status: int | None, seconds: float) -> None:
        if status == 429 and self.limiter is not None:
            self.limiter.penalize()
        if self.observer is not None:
            try:
                self.observer(method.upper(), path_template(url), status, seconds)
            except Exception:  # an observer must never fail a payment
                logger.exception("Stripe request observer failed")
