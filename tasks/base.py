"""The Celery side of a payment message: decode, claim, run one workflow, and turn its
outcome into an ack, a retry or a recorded failure."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from typing import Any

from celery import Task
from celery._state import _task_stack
from celery.exceptions import SoftTimeLimitExceeded
from celery.worker.request import Request
from sqlalchemy.exc import DataError, DBAPIError, SQLAlchemyError

from db.session import transaction
from tasks import ledger
from tasks.context import Context
from tasks.errors import (
    ConfigurationFault,
    IdempotencyConflict,
    InvalidMessage,
    PermanentError,
    PrerequisiteMissing,
    TransientError,
)
from tasks.logs import EventLog
from tasks.messages import Message, parse_message
from tasks.redact import safe_repr
from tasks.retry import backoff
from worker.resources import resources
from worker.settings import Settings, get_settings

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


class PaymentTask(Task):  # type: ignore[misc]
    """Base of the five payment tasks; `message_type` and `workflow` are set per task."""

    abstract = True
    typing = False  # any arguments reach handle(), which rejects bad ones with a record
    acks_late = True
    reject_on_worker_lost = True
    ignore_result = True
    # Celery's own retry count is not a budget here: the ledger counts failures and
    # decides when an event is dead, so Celery must never drop a retry on its own.
    max_retries = None
    Request = "tasks.base:MaskedRequest"
    # Expected outcomes: logged without a traceback.
    throws = (InvalidMessage, IdempotencyConflict)

    message_type: str
    workflow: Workflow

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
            raise self.retry(countdown=self._cap(60)) from None

        log = log.bind(user_id=message.user_id)
        owner = f"{socket.gethostname()}:{os.getpid()}:{self.request.id}"
        try:
            with transaction(res.engine) as session:
                claimed = ledger.claim(
                    session, self.message_type, message, owner, res.settings.lease_seconds
                )
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
            # Poll with backoff rather than sleeping out the whole lease: the holder usually
            # finishes in well under a second and this delivery then finds it done.
            remaining = (claimed.until - ledger.now()).total_seconds() + 1
            settings = res.settings
            polled = backoff(self.request.retries + 1, 1.0, settings.retry_backoff_max)
            wait = min(remaining, polled)
            log.info("held by another delivery; checking back later", seconds=round(wait, 1))
            raise self.retry(countdown=self._cap(wait))

        log = log.bind(attempt=claimed.attempts)
        log.info("processing", point=claimed.recovery_point)
        return self._run(Context(res.engine, res.gateway, res.settings, claimed), message, log)

    def _run(self, ctx: Context, message: Message, log: EventLog) -> Outcome:
        settings = ctx.settings
        try:
            self.workflow(ctx, message)
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
            return self._later(ctx, exc.message, log, counts=False, delay_for=wait)
        except PermanentError as exc:
            return self._fail(ctx, exc, log)
        except DataError as exc:
            return self._fail(ctx, _unstorable(exc), log)
        except ConfigurationFault as exc:
            _shout(exc, log)
            return self._later(
                ctx, str(exc), log, counts=False, delay_for=lambda _: settings.retry_backoff_max
            )
        except (TransientError, SoftTimeLimitExceeded, DBAPIError) as exc:
            error = str(exc) if isinstance(exc, TransientError) else f"{type(exc).__name__}: {exc}"
            log.warning("transient failure", error=error)
            return self._later(ctx, error, log, counts=True, delay_for=_backoff_for(settings))
        except Exception as exc:
            # A bug or an unforeseen error: retried within the budget, then dead for a human.
            logging.getLogger("payworker").exception("unexpected error")
            error = f"internal_error: {type(exc).__name__}: {exc}"
            return self._later(ctx, error, log, counts=True, delay_for=_backoff_for(settings))
        log.info("finished")
        return {"event_id": message.event_id, "status": "done"}

    def _fail(self, ctx: Context, error: PermanentError, log: EventLog) -> Outcome:
        with ctx.tx() as session:
            ctx.fail(session, error)
        log.info("failed", code=error.code, error=error.message)
        return {"event_id": ctx.claim.event_id, "status": "failed", "error_code": error.code}

    def _later(
        self,
        ctx: Context,
        error: str,
        log: EventLog,
        *,
        counts: bool,
        delay_for: Callable[[int], float],
    ) -> Outcome:
        """Schedule the next attempt, or bury the event when its budget is spent."""
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
        except SQLAlchemyError as exc:
            # The ledger is unreachable: the broker retry is the record left; the lease
            # expires on its own.
            return self._retry_without_ledger(exc, log)
        if delay is None:
            log.error("dead: retries exhausted", error=error)
            return {"event_id": ctx.claim.event_id, "status": "dead"}
        raise self.retry(countdown=self._cap(delay))

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

    def _retry_without_ledger(self, exc: Exception, log: EventLog) -> Outcome:
        settings = get_settings()
        log.warning("database unavailable; retrying", error=type(exc).__name__)
        delay = backoff(
            self.request.retries + 1, settings.retry_backoff_base, settings.retry_backoff_max
        )
        raise self.retry(countdown=self._cap(delay))

    def _cap(self, seconds: float) -> float:
        """Countdowns stay below the broker's redelivery timeout (checked at start-up)."""
        return max(0.5, min(seconds, get_settings().max_countdown))


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
