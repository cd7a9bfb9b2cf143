"""The Celery side of a payment message: decode, claim, run one workflow, and turn its
outcome into an ack, a retry or a recorded failure."""

from __future__ import annotations

import logging
import os
import random
import socket
import time
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from typing import Any

from celery import Task
from celery._state import _task_stack
from celery.exceptions import Reject, SoftTimeLimitExceeded
from celery.worker.request import Request
from sqlalchemy.exc import DataError, DBAPIError, SQLAlchemyError

from db.session import transaction
from tasks import ledger
from tasks.context import Context
from tasks.errors import (
    ConfigurationFault,
    IdempotencyConflict,
    InvalidMessage,
    PayworkerError,
    PermanentError,
    PrerequisiteMissing,
    TransientError,
)
from tasks.logs import EventLog
from tasks.messages import CardTokenReceived, Message, parse_message
from tasks.ratelimit import RateLimitedLocally
from tasks.redact import safe_repr
from tasks.retry import backoff
from worker import metrics
from worker.resources import Resources, resources
from worker.settings import MAX_DB_DOWN_PAUSE, Settings, get_settings

Workflow = Callable[[Context, Any], None]
Outcome = dict[str, Any]


class MaskedRequest(Request):  # type: ignore[misc]
    """Shows Flower and the logs masked arguments, whatever the publisher put in the
    message headers (send_task copies the raw kwargs, card token included)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._argsrepr = safe_repr(list(self._args or ()))
        self._kwargsrepr = safe_repr(self._kwargs or {})


def _readable(kwargs: Any, name: str) -> str | None:
    value = kwargs.get(name) if isinstance(kwargs, dict) else None
    if isinstance(value, str) and 0 < len(value) <= 200 and "\x00" not in value:
        return value
    return None


class LedgerTask(Task):  # type: ignore[misc]
    """Base of tasks that run one ledger event: acks late, never loses a message."""

    abstract = True
    typing = False  # any arguments reach the task, which rejects bad ones with a record
    acks_late = True
    reject_on_worker_lost = True
    ignore_result = True
    # Celery never retries these by itself: the ledger schedules every retry.
    max_retries = 0
    Request = "tasks.base:MaskedRequest"
    # Expected outcomes: logged without a traceback.
    throws = (InvalidMessage, IdempotencyConflict)

    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        # Celery's own __call__ names its first parameter `self`; a message with a kwarg
        # of that name would crash it before we could reject the message properly.
        _task_stack.push(self)
        self.push_request(args=args, kwargs=kwargs)
        try:
            return self.run(*args, **kwargs)
        finally:
            self.pop_request()
            _task_stack.pop()

    def run_workflow(
        self, ctx: Context, workflow: Workflow, message: Message, log: EventLog
    ) -> Outcome:
        """Run one claimed event's workflow and record what it came to."""
        settings = ctx.settings
        try:
            workflow(ctx, message)
        except ledger.LeaseLost as exc:
            log.warning("lease lost; the new owner finishes the event", error=exc.message)
            return {"event_id": message.event_id, "status": "lease_lost"}
        except PrerequisiteMissing as exc:
            deadline = ctx.claim.created_at + timedelta(seconds=settings.prerequisite_wait_seconds)
            remaining = (deadline - ledger.now()).total_seconds()
            if remaining <= 0:
                return self._fail(ctx, PermanentError(exc.message, code=exc.code), log)
            log.info("waiting for a prerequisite", reason=exc.message)
            wait = partial(
                _wait_delay, settings=settings, attempt=ctx.claim.attempts, cap=remaining
            )
            return self._later(ctx, exc, log, counts=False, delay_for=wait)
        except PermanentError as exc:
            return self._fail(ctx, exc, log)
        except DataError as exc:
            return self._fail(ctx, _unstorable(exc), log)
        except ConfigurationFault as exc:
            _shout(exc, log)
            return self._later(
                ctx, exc, log, counts=False, delay_for=lambda _: settings.retry_backoff_max
            )
        except RateLimitedLocally as exc:
            # Our own limiter said "not now": Stripe did nothing, so no budget is spent.
            log.info("rate limited locally", error=_describe(exc))
            return self._later(ctx, exc, log, counts=False, delay_for=_backoff_for(settings))
        except (TransientError, SoftTimeLimitExceeded, DBAPIError) as exc:
            log.warning("transient failure", error=_describe(exc))
            return self._later(ctx, exc, log, counts=True, delay_for=_backoff_for(settings))
        except Exception as exc:
            # A bug or an unforeseen error: retried within the budget, then dead for a human.
            logging.getLogger("payworker").exception("unexpected error")
            return self._later(ctx, exc, log, counts=True, delay_for=_backoff_for(settings))
        status = ctx.final_status or "succeeded"
        _record_final(ctx, status)
        log.info("finished", status=status)
        return {"event_id": message.event_id, "status": status}

    def _fail(self, ctx: Context, error: PermanentError, log: EventLog) -> Outcome:
        with ctx.tx() as session:
            ctx.fail(session, error)
        _record_final(ctx, "failed")
        log.info("failed", code=error.code, error=error.message)
        return {"event_id": ctx.claim.event_id, "status": "failed", "error_code": error.code}

    def _later(
        self,
        ctx: Context,
        exc: BaseException,
        log: EventLog,
        *,
        counts: bool,
        delay_for: Callable[[int], float],
    ) -> Outcome:
        """Schedule the next attempt, or bury the event when its budget is spent."""
        error = _describe(exc)
        try:
            with ctx.tx() as session:
                delay = ledger.retry_later(
                    session,
                    ctx.claim,
                    error,
                    counts=counts,
                    max_attempts=ctx.settings.max_attempts,
                    delay_for=delay_for,
                )
        except ledger.LeaseLost:
            return {"event_id": ctx.claim.event_id, "status": "lease_lost"}
        except SQLAlchemyError:
            # The ledger is unreachable, but the event row exists: its lease runs out and
            # the sweeper re-drives it once Postgres is back.
            log.warning("database unavailable; the sweeper will re-drive the event")
            return {"event_id": ctx.claim.event_id, "status": "abandoned"}
        if delay is None:
            _record_final(ctx, "dead")
            log.error("dead: retries exhausted", error=error)
            return {"event_id": ctx.claim.event_id, "status": "dead"}
        # No countdown on the broker: the sweeper publishes the event again when due.
        metrics.RETRIES.labels(ctx.message_type, _reason(exc)).inc()
        log.info("retry scheduled", seconds=round(delay, 2), error=error)
        return {"event_id": ctx.claim.event_id, "status": "retry_scheduled", "delay": delay}

    def _retry_without_ledger(self, exc: Exception, log: EventLog) -> Outcome:
        """Postgres is unreachable before the event has a row: this message is its only
        record, so it goes back to the broker after a pause."""
        log.warning(
            "database unavailable; message goes back to the queue", error=type(exc).__name__
        )
        return self._hand_back(log, reason=type(exc).__name__)

    def _hand_back(self, log: EventLog, *, reason: str) -> Outcome:
        """Requeue this message after a short pause (a pause in the worker, not a broker
        countdown: nothing is held past the visibility timeout)."""
        pause = MAX_DB_DOWN_PAUSE * random.uniform(0.5, 1.0)
        time.sleep(pause)
        log.info("message requeued", reason=reason, paused=round(pause, 2))
        raise Reject(reason, requeue=True)


class PaymentTask(LedgerTask):
    """Base of the five payment tasks; `message_type` and `workflow` are set per task."""

    abstract = True
    message_type: str
    workflow: Workflow

    def handle(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Outcome:
        """Process one delivery; raises Retry, InvalidMessage or IdempotencyConflict."""
        event_id = _readable(kwargs, "event_id")
        log = EventLog(event_id=event_id, task_id=self.request.id, task=self.name)
        try:
            res = resources()
            if args:
                raise InvalidMessage(
                    f"messages take keyword arguments only; got {len(args)} positional"
                )
            message = parse_message(self.message_type, kwargs)
        except InvalidMessage as exc:
            return self._reject(exc, kwargs, log)
        except ConfigurationFault as exc:
            _shout(exc, log)
            return self._hand_back(log, reason=exc.message)

        log = log.bind(user_id=message.user_id)
        owner = f"{socket.gethostname()}:{os.getpid()}:{self.request.id}"
        sealed = res.sealer.seal(message.token) if isinstance(message, CardTokenReceived) else None
        try:
            claimed = _claim(res, self.message_type, message, owner, sealed)
        except IdempotencyConflict as exc:
            log.error("idempotency conflict", error=exc.message)
            raise
        except DataError as exc:
            # Postgres refuses the values themselves: retrying cannot help.
            return self._reject(_unstorable(exc), kwargs, log)
        except SQLAlchemyError as exc:
            return self._retry_without_ledger(exc, log)

        if isinstance(claimed, ledger.AlreadyFinished):
            log.info("duplicate delivery ignored", status=claimed.status)
            return {"event_id": event_id, "status": claimed.status, "duplicate": True}
        if isinstance(claimed, ledger.Busy):
            # Another delivery is working on it; if that worker dies, its lease runs out
            # and the sweeper re-drives the event. This copy has nothing to add.
            log.info("duplicate delivery ignored: event in progress elsewhere")
            return {"event_id": event_id, "status": "in_progress", "duplicate": True}

        log = log.bind(attempt=claimed.attempts)
        log.info("processing", point=claimed.recovery_point)
        ctx = Context(res.engine, res.gateway, res.settings, claimed, self.message_type)
        return self.run_workflow(ctx, self.workflow, message, log)

    def _reject(self, exc: InvalidMessage, kwargs: Any, log: EventLog) -> Outcome:
        """Record an invalid message against its event (if it has a readable id), then fail
        the task so the rejection is visible in Flower too."""
        event_id = log.fields["event_id"]
        if event_id is None:
            log.error("rejected message without a readable event_id", error=exc.message)
            raise exc
        try:
            with transaction(resources().engine) as session:
                ledger.record_invalid(
                    session,
                    self.message_type,
                    event_id,
                    _readable(kwargs, "user_id"),
                    kwargs if isinstance(kwargs, dict) else {"raw": kwargs},
                    exc.message,
                    queue=get_settings().queue,
                )
        except IdempotencyConflict as conflict:
            log.error("idempotency conflict", error=conflict.message)
            raise conflict from None
        except DataError:
            log.error("invalid message could not be recorded", error=exc.message)
            raise exc from None
        except SQLAlchemyError as db_error:
            return self._retry_without_ledger(db_error, log)
        log.warning("invalid message recorded", error=exc.message)
        raise exc


def _claim(
    res: Resources, message_type: str, message: Message, owner: str, sealed: str | None
) -> ledger.ClaimOutcome:
    """Claim the event in a transaction of its own. The claim is one idempotent statement:
    when it fails because its pooled connection turned out dead (Postgres restarted, or
    its backend was killed), it is repeated once at once on a fresh connection."""
    for tries_left in (1, 0):
        try:
            with res.engine.begin() as conn:
                return ledger.claim(
                    conn,
                    message_type,
                    message,
                    owner,
                    res.settings.lease_seconds,
                    queue=res.settings.queue,
                    sealed_token=sealed,
                )
        except DBAPIError as exc:
            if not (tries_left and exc.connection_invalidated):
                raise
    raise AssertionError("unreachable")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, PayworkerError):
        return str(exc)
    if isinstance(exc, DBAPIError | SoftTimeLimitExceeded):
        return f"{type(exc).__name__}: {exc}"
    return f"internal_error: {type(exc).__name__}: {exc}"


def _reason(exc: BaseException) -> str:
    """A bounded label for the retry metric: our error code, or the exception class."""
    if isinstance(exc, PayworkerError):
        return exc.code
    if isinstance(exc, DBAPIError):
        return "database"
    if isinstance(exc, SoftTimeLimitExceeded):
        return "time_limit"
    return "internal_error"


def _record_final(ctx: Context, status: str) -> None:
    metrics.EVENTS.labels(ctx.message_type, status).inc()
    age = (ledger.now() - ctx.claim.created_at).total_seconds()
    metrics.OUTCOME_SECONDS.labels(ctx.message_type, status).observe(max(0.0, age))


def _unstorable(exc: DataError) -> InvalidMessage:
    return InvalidMessage(f"the message holds values Postgres cannot store: {exc.orig}")


def _shout(exc: ConfigurationFault, log: EventLog) -> None:
    log.critical(
        "CONFIGURATION FAULT: Stripe refuses our credentials; events wait until"
        " STRIPE_API_KEY is fixed",
        error=exc.message,
    )


def _wait_delay(_failures: int, *, settings: Settings, attempt: int, cap: float) -> float:
    """Waiting for a prerequisite backs off by attempt, never past the waiting window."""
    return min(cap, backoff(attempt, settings.retry_backoff_base, settings.retry_backoff_max))


def _backoff_for(settings: Settings) -> Callable[[int], float]:
    return partial(backoff, base=settings.retry_backoff_base, cap=settings.retry_backoff_max)
