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
from celery.exceptions import SoftTimeLimitExceeded
from celery.worker.request import Request
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

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
from tasks.logs import log
from tasks.messages import Message, parse_message
from tasks.redact import safe_repr
from tasks.retry import backoff
from worker.resources import Resources, resources

Workflow = Callable[[Context, Any], None]


class MaskedRequest(Request):  # type: ignore[misc]
    """Shows Flower and the logs masked arguments, whatever the publisher put in the
    message headers (send_task copies the raw kwargs, card token included)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._argsrepr = safe_repr(list(self._args or ()))
        self._kwargsrepr = safe_repr(self._kwargs or {})


def _readable(kwargs: Any, name: str) -> str | None:
    value = kwargs.get(name) if isinstance(kwargs, dict) else None
    return value if isinstance(value, str) and 0 < len(value) <= 200 else None


class PaymentTask(Task):  # type: ignore[misc]
    """Base of the five payment tasks; `message_type` and `workflow` are set per task."""

    abstract = True
    typing = False  # any arguments reach handle(), which rejects bad ones with a record
    acks_late = True
    reject_on_worker_lost = True
    ignore_result = True
    Request = "tasks.base:MaskedRequest"
    # Expected outcomes: logged without a traceback.
    throws = (InvalidMessage, IdempotencyConflict)

    message_type: str
    workflow: Workflow

    def handle(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        task_id = self.request.id
        event_id = _readable(kwargs, "event_id")
        try:
            res = resources()
            if args:
                raise InvalidMessage(
                    f"messages take keyword arguments only; got {len(args)} positional"
                )
            message = parse_message(self.message_type, kwargs)
        except InvalidMessage as exc:
            return self._reject(exc, event_id, kwargs, task_id)
        except ConfigurationFault as exc:
            self._shout(exc, event_id)
            raise self.retry(countdown=self._cap(60), max_retries=None) from None

        owner = f"{socket.gethostname()}:{os.getpid()}:{task_id}"
        try:
            with ledger_tx(res) as session:
                claimed = ledger.claim(
                    session, self.message_type, message, owner, res.settings.lease_seconds
                )
        except IdempotencyConflict as exc:
            log(logging.ERROR, "idempotency conflict", event_id=event_id, task_id=task_id,
                error=exc.message)
            raise
        except SQLAlchemyError as exc:
            return self._retry_without_ledger(exc, event_id)

        if isinstance(claimed, ledger.AlreadyFinished):
            log(logging.INFO, "duplicate delivery ignored", event_id=event_id, task_id=task_id,
                status=claimed.status)
            return {"event_id": event_id, "status": claimed.status, "duplicate": True}
        if isinstance(claimed, ledger.Busy):
            wait = (claimed.until - ledger.now()).total_seconds() + 1
            log(logging.INFO, "event held by another delivery; checking back later",
                event_id=event_id, task_id=task_id, seconds=round(wait, 1))
            raise self.retry(countdown=self._cap(wait), max_retries=None)

        log(logging.INFO, "processing", event_id=event_id, task_id=task_id,
            user_id=message.user_id, attempt=claimed.attempts, point=claimed.recovery_point)
        ctx = Context(res.engine, res.gateway, res.settings, claimed)
        return self._run(ctx, message)

    def _run(self, ctx: Context, message: Message) -> dict[str, Any]:
        event_id, task_id = message.event_id, self.request.id
        settings = ctx.settings
        try:
            self.workflow(ctx, message)
            log(logging.INFO, "finished", event_id=event_id, task_id=task_id)
            return {"event_id": event_id, "status": "done"}
        except ledger.LeaseLost as exc:
            log(logging.WARNING, "lease lost; the new owner finishes the event",
                event_id=event_id, task_id=task_id, error=exc.message)
            return {"event_id": event_id, "status": "lease_lost"}
        except PrerequisiteMissing as exc:
            deadline = ctx.claim.created_at + timedelta(seconds=settings.prerequisite_wait_seconds)
            remaining = (deadline - ledger.now()).total_seconds()
            if remaining <= 0:
                return self._fail(ctx, PermanentError(exc.message, code=exc.code))
            delay_for = partial(self._wait_delay, attempts=ctx.claim.attempts, limit=remaining)
            return self._later(ctx, exc.message, counts=False, delay_for=delay_for)
        except PermanentError as exc:
            return self._fail(ctx, exc)
        except ConfigurationFault as exc:
            self._shout(exc, event_id)
            return self._later(ctx, str(exc), counts=False,
                               delay_for=lambda _: settings.retry_backoff_max)
        except (TransientError, SoftTimeLimitExceeded, DBAPIError) as exc:
            error = str(exc) if isinstance(exc, TransientError) else f"{type(exc).__name__}: {exc}"
            log(logging.WARNING, "transient failure", event_id=event_id, task_id=task_id,
                error=error)
            return self._later(ctx, error, counts=True, delay_for=self._backoff_for(settings))
        except Exception as exc:
            # A bug or an unforeseen error: retried within the budget, then dead for a human.
            logging.getLogger("payworker").exception("unexpected error event_id=%s", event_id)
            error = f"internal_error: {type(exc).__name__}: {exc}"
            return self._later(ctx, error, counts=True, delay_for=self._backoff_for(settings))

    def _fail(self, ctx: Context, error: PermanentError) -> dict[str, Any]:
        with ctx.tx() as session:
            ctx.fail(session, error)
        log(logging.INFO, "failed", event_id=ctx.claim.event_id, task_id=self.request.id,
            code=error.code, error=error.message)
        return {"event_id": ctx.claim.event_id, "status": "failed", "error_code": error.code}

    def _later(
        self, ctx: Context, error: str, *, counts: bool, delay_for: Callable[[int], float]
    ) -> dict[str, Any]:
        settings = ctx.settings
        try:
            with ctx.tx() as session:
                delay = ledger.retry_later(
                    session, ctx.claim, error, counts=counts,
                    max_attempts=settings.max_attempts, delay_for=delay_for,
                )
        except ledger.LeaseLost:
            return {"event_id": ctx.claim.event_id, "status": "lease_lost"}
        except SQLAlchemyError as exc:
            # The ledger is unreachable: the broker retry is the only record left; the
            # lease expires on its own.
            return self._retry_without_ledger(exc, ctx.claim.event_id)
        if delay is None:
            log(logging.ERROR, "dead: retries exhausted", event_id=ctx.claim.event_id,
                task_id=self.request.id, error=error)
            return {"event_id": ctx.claim.event_id, "status": "dead"}
        raise self.retry(countdown=self._cap(delay), max_retries=None)

    def _reject(
        self, exc: InvalidMessage, event_id: str | None, kwargs: Any, task_id: str
    ) -> dict[str, Any]:
        if event_id is None:
            log(logging.ERROR, "rejected message without a readable event_id",
                task=self.name, task_id=task_id, error=exc.message)
            raise exc
        try:
            res = resources()
            with ledger_tx(res) as session:
                ledger.record_invalid(
                    session, self.message_type, event_id, _readable(kwargs, "user_id"),
                    kwargs if isinstance(kwargs, dict) else {"raw": kwargs}, exc.message,
                )
        except IdempotencyConflict as conflict:
            log(logging.ERROR, "idempotency conflict", event_id=event_id, task_id=task_id,
                error=conflict.message)
            raise conflict from None
        except SQLAlchemyError as db_error:
            return self._retry_without_ledger(db_error, event_id)
        log(logging.WARNING, "invalid message recorded", event_id=event_id, task_id=task_id,
            error=exc.message)
        raise exc

    def _retry_without_ledger(self, exc: Exception, event_id: str | None) -> dict[str, Any]:
        settings = resources().settings
        log(logging.WARNING, "database unavailable; retrying", event_id=event_id,
            task_id=self.request.id, error=f"{type(exc).__name__}")
        delay = backoff(self.request.retries + 1, settings.retry_backoff_base,
                        settings.retry_backoff_max)
        raise self.retry(countdown=self._cap(delay), max_retries=None)

    def _shout(self, exc: ConfigurationFault, event_id: str | None) -> None:
        log(logging.CRITICAL, "CONFIGURATION FAULT: Stripe refuses our credentials; events wait"
            " until STRIPE_API_KEY is fixed", event_id=event_id, error=exc.message)

    def _cap(self, seconds: float) -> float:
        return max(0.5, min(seconds, resources().settings.max_countdown))

    @staticmethod
    def _wait_delay(failures: int, *, attempts: int, limit: float) -> float:
        settings = resources().settings
        return min(limit, backoff(attempts, settings.retry_backoff_base,
                                  settings.retry_backoff_max))

    @staticmethod
    def _backoff_for(settings: Any) -> Callable[[int], float]:
        return partial(_backoff, base=settings.retry_backoff_base, cap=settings.retry_backoff_max)


def _backoff(failures: int, *, base: float, cap: float) -> float:
    return backoff(failures, base, cap)


def ledger_tx(res: Resources) -> Any:
    from db.session import transaction

    return transaction(res.engine)
