"""The Celery side of a payment message: decode, claim, hand the event to the runner, and
turn what cannot be run into an ack, a requeue or a recorded rejection."""

from __future__ import annotations

import os
import random
import socket
import time
from typing import Any

from celery import Task
from celery._state import _task_stack
from celery.exceptions import Reject
from celery.worker.request import Request
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from core.errors import (
    ConfigurationFault,
    IdempotencyConflict,
    InvalidMessage,
    MessageRefused,
    translate,
)
from core.redact import safe_repr
from core.settings import MAX_DB_DOWN_PAUSE
from core.signing import SIGNATURE_HEADER
from db import claims
from tasks.authentication import HIDDEN, refusal, refuse
from tasks.logs import EventLog
from tasks.messages import (
    MAX_ID_LENGTH,
    CardTokenReceived,
    Message,
    check_size,
    is_valid_id,
    parse_message,
)
from tasks.phases import Workflow
from tasks.redrive import resume
from tasks.resources import ProcessResources, Resources
from tasks.runner import Outcome, run_event

# A payment task's message with this header is a re-drive (published by the sweeper or a
# replay): it names its event only, and the event resumes from the ledger.
REDRIVE_HEADER = "payworker_redrive"


def redrive_requested(request: Any) -> bool:
    """Whether this delivery is a re-drive: its message carries REDRIVE_HEADER."""
    return bool(request.get(REDRIVE_HEADER))


class MaskedRequest(Request):  # type: ignore[misc]
    """What Flower, `celery inspect` and the logs show of a delivery: its arguments as we
    mask them, never the publisher's `argsrepr`/`kwargsrepr` headers (send_task copies the
    raw kwargs there, card token included), and nothing of an unauthenticated message."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self._unauthenticated():
            self._argsrepr = self._kwargsrepr = HIDDEN
        else:
            self._argsrepr = safe_repr(list(self._args or ()))
            self._kwargsrepr = safe_repr(self._kwargs or {})
        # The task-received event carries these; the task's own request is built from
        # this dict, so the publisher's copies must not survive there either.
        self._request_dict["argsrepr"] = self._argsrepr
        self._request_dict["kwargsrepr"] = self._kwargsrepr

    def info(self, safe: bool = False) -> dict[str, Any]:
        """What `celery inspect active|reserved|scheduled|query_task` and Flower's worker
        pages show: Celery gives the raw arguments unless `safe`; we always mask them."""
        shown: dict[str, Any] = super().info(safe=True)
        return shown

    def _unauthenticated(self) -> bool:
        resources: ProcessResources | None = getattr(self._task, "resources", None)
        if resources is None:
            return False
        ring = resources.settings().message_keyring
        signature = self._request_dict.get(SIGNATURE_HEADER)
        return refusal(ring, self._type, self._args, self._kwargs, signature) is not None


def readable(kwargs: Any, name: str) -> str | None:
    """A kwarg's value if it is a plausible id (to name the event in logs and the ledger):
    a printable string of 1-200 characters. An event_id outside the contract's characters
    but printable (`заказ-1`) is still readable, so that the app finds its refusal under the
    id it sent; one with control or invisible characters (NUL, ESC, a bidi override) is
    not, so that it never becomes a key that terminals and tools would act on."""
    value = kwargs.get(name) if isinstance(kwargs, dict) else None
    if isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH and value.isprintable():
        return value
    return None


def valid_id(kwargs: Any, name: str) -> str | None:
    """A kwarg's value if it is an id as the contract allows (tasks/messages.py ID_PATTERN)."""
    value = readable(kwargs, name)
    return value if value is not None and is_valid_id(value) else None


class AuthenticatedTask(Task):  # type: ignore[misc]
    """Base of every payworker task: with PAYWORKER_MESSAGE_KEYS set, a delivery that is
    not authenticated fails with MessageRefused before the task's body runs (so it is acked
    and dropped). The worker layer sets `resources` (tasks/registry.py)."""

    abstract = True
    # Expected outcomes: logged without a traceback.
    throws: tuple[type[Exception], ...] = (MessageRefused,)
    resources: ProcessResources

    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        # Celery's own __call__ names its first parameter `self`; a message with a kwarg
        # of that name would crash it before we could reject the message properly.
        _task_stack.push(self)
        self.push_request(args=args, kwargs=kwargs)
        try:
            self.authenticate(args, kwargs)
            return self.run(*args, **kwargs)
        finally:
            self.pop_request()
            _task_stack.pop()

    def authenticate(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Raises MessageRefused (logged, counted) when this delivery is not authenticated."""
        ring = self.resources.settings().message_keyring
        signature = getattr(self.request, SIGNATURE_HEADER, None)
        reason = refusal(ring, self.name, args, kwargs, signature)
        if reason is not None:
            raise refuse(self.resources, self.name, reason, kwargs)


class LedgerTask(AuthenticatedTask):
    """Base of tasks that run one ledger event: acks late, never loses a message."""

    abstract = True
    typing = False  # any arguments reach the task, which rejects bad ones with a record
    acks_late = True
    reject_on_worker_lost = True
    ignore_result = True
    # Celery never retries these by itself: the ledger schedules every retry.
    max_retries = 0
    Request = "tasks.base:MaskedRequest"
    throws = (InvalidMessage, IdempotencyConflict, MessageRefused)

    def owner(self) -> str:
        """Who holds an event's lease while this run works on it."""
        return f"{socket.gethostname()}:{os.getpid()}:{self.request.id}"

    def redrive(self, event_id: Any) -> Outcome:
        """Resume one event from the ledger (tasks/redrive.py)."""
        log = EventLog(event_id=event_id, task_id=self.request.id, task=self.name)
        return resume(self.resources, event_id, self.owner(), log)

    def hand_back(self, log: EventLog, *, reason: str) -> Outcome:
        """Requeue this message after a short pause (a pause in the worker, not a broker
        countdown: nothing is held past the visibility timeout). For a message that has no
        ledger row to be scheduled in: Postgres is down, or there is no configuration."""
        pause = MAX_DB_DOWN_PAUSE * random.uniform(0.5, 1.0)
        time.sleep(pause)
        log.info("message requeued", reason=reason, paused=round(pause, 2))
        raise Reject(reason, requeue=True)


class PaymentTask(LedgerTask):
    """Base of the payment tasks; `workflow` is set per task."""

    abstract = True
    workflow: Workflow[Any, Any]

    def handle(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Outcome:
        """Process one delivery; raises Reject, InvalidMessage or IdempotencyConflict."""
        if redrive_requested(self.request):
            return self.redrive(readable(kwargs, "event_id"))
        message_type = self.workflow.message_type
        event_id = readable(kwargs, "event_id")
        log = EventLog(event_id=event_id, task_id=self.request.id, task=self.name)
        try:
            res = self.resources.get()
            check_size(kwargs, res.settings.max_message_bytes)
            if args:
                raise InvalidMessage(
                    f"messages take keyword arguments only; got {len(args)} positional"
                )
            message = parse_message(message_type, kwargs)
        except ConfigurationFault as exc:
            log.critical("CONFIGURATION FAULT: events wait until it is fixed", error=exc.message)
            return self.hand_back(log, reason=exc.message)
        except InvalidMessage as exc:
            return self._reject(exc, kwargs, log)

        log = log.bind(user_id=message.user_id)
        try:
            claimed = _claim(res, message_type, message, self.owner())
        except IdempotencyConflict as exc:
            log.error("idempotency conflict", error=exc.message)
            raise
        except SQLAlchemyError as exc:
            error = translate(exc)
            if isinstance(error, InvalidMessage):  # Postgres refuses the values themselves
                return self._reject(error, kwargs, log)
            return self._without_ledger(exc, log)

        if isinstance(claimed, claims.AlreadyFinished):
            log.info("duplicate delivery ignored", status=claimed.status)
            return {"event_id": event_id, "status": claimed.status, "duplicate": True}
        if isinstance(claimed, claims.Busy):
            # Another delivery is working on it; if that worker dies, its lease runs out
            # and the sweeper re-drives the event. This copy has nothing to add.
            log.info("duplicate delivery ignored: event in progress elsewhere")
            return {"event_id": event_id, "status": "in_progress", "duplicate": True}

        log = log.bind(attempt=claimed.attempts)
        log.info("processing", point=claimed.recovery_point)
        return run_event(res, self.workflow, claimed, message, log)

    def _reject(self, exc: InvalidMessage, kwargs: Any, log: EventLog) -> Outcome:
        """Record an invalid message against its event (if it has a readable id), then fail
        the task so the rejection is visible in Flower too."""
        event_id = log.fields["event_id"]
        if event_id is None:
            log.error("rejected message without a readable event_id", error=exc.message)
            raise exc
        res = self.resources.get()
        try:
            with res.engine.begin() as conn:
                claims.record_invalid(
                    conn,
                    self.workflow.message_type,
                    event_id,
                    valid_id(kwargs, "user_id"),
                    kwargs if isinstance(kwargs, dict) else {"raw": kwargs},
                    exc.message,
                    queue=res.settings.queue,
                    stored=exc.stored_payload,
                )
        except IdempotencyConflict as conflict:
            log.error("idempotency conflict", error=conflict.message)
            raise conflict from None
        except SQLAlchemyError as db_error:
            if isinstance(translate(db_error), InvalidMessage):
                log.error("invalid message could not be recorded", error=exc.message)
                raise exc from None
            return self._without_ledger(db_error, log)
        log.warning("invalid message recorded", error=exc.message)
        raise exc

    def _without_ledger(self, exc: Exception, log: EventLog) -> Outcome:
        """Postgres is unreachable before the event has a row: this message is its only
        record, so it goes back to the broker after a pause."""
        log.warning(
            "database unavailable; message goes back to the queue", error=type(exc).__name__
        )
        return self.hand_back(log, reason=type(exc).__name__)


def deliver(self: PaymentTask, /, *args: Any, **kwargs: Any) -> Outcome:
    """The body of every payment task. `self` is positional-only so a message with a kwarg
    named "self" is rejected as invalid instead of crashing the call."""
    return self.handle(args, kwargs)


def _claim(res: Resources, message_type: str, message: Message, owner: str) -> claims.ClaimOutcome:
    """Claim the event in a transaction of its own. The claim is one idempotent statement:
    when it fails because its pooled connection turned out dead (Postgres restarted, or
    its backend was killed), it is repeated once at once on a fresh connection."""
    sealed = res.sealer.seal(message.token) if isinstance(message, CardTokenReceived) else None
    event = claims.NewEvent(
        event_id=message.event_id,
        type=message_type,
        user_id=message.user_id,
        payload=message.stored_payload(),
        payload_hash=message.fingerprint(),
        queue=res.settings.queue,
        sealed_token=sealed,
    )
    for tries_left in (1, 0):
        try:
            with res.engine.begin() as conn:
                return claims.claim(conn, event, owner, res.settings.lease_seconds)
        except DBAPIError as exc:
            if not (tries_left and exc.connection_invalidated):
                raise
    raise AssertionError("unreachable")
