"""The payment_events ledger: claim an event, checkpoint it, and record its outcome.

Every function here runs inside a caller's short transaction and touches one event row,
locked with SELECT … FOR UPDATE so two deliveries of one event never interleave."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from db.models import TERMINAL_STATUSES, EventStatus, PaymentEvent
from tasks.errors import IdempotencyConflict, PayworkerError
from tasks.messages import Message
from tasks.redact import redact, sanitize

STARTED = "started"


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Claim:
    """An event this worker now owns until `locked_until`."""

    event_id: str
    owner: str
    recovery_point: str
    progress: dict[str, Any]
    generation: int
    attempts: int
    transient_failures: int
    created_at: datetime


@dataclass(frozen=True)
class Busy:
    """Another delivery of the event holds a live lease."""

    until: datetime


@dataclass(frozen=True)
class AlreadyFinished:
    """The event reached a final status before; this delivery is a duplicate."""

    status: str


ClaimOutcome = Claim | Busy | AlreadyFinished


class LeaseLost(PayworkerError):
    """Our lease expired and another worker took the event over: stop without writing."""

    code = "lease_lost"


def _locked(session: Session, event_id: str) -> PaymentEvent | None:
    stmt = select(PaymentEvent).where(PaymentEvent.event_id == event_id).with_for_update()
    return session.scalars(stmt).one_or_none()


def _conflict(event: PaymentEvent, message_type: str) -> IdempotencyConflict:
    return IdempotencyConflict(
        f"event {event.event_id!r} was first received as {event.type} with another payload;"
        f" this {message_type} delivery is rejected and the first one stands",
    )


def claim(
    session: Session,
    message_type: str,
    message: Message,
    owner: str,
    lease_seconds: int,
    *,
    queue: str,
    sealed_token: str | None = None,
) -> ClaimOutcome:
    """Create the event row if new, then take its lease unless it is finished or held.

    Raises:
        IdempotencyConflict: the event_id is known with another type or payload.
    """
    digest = message.fingerprint()
    session.execute(
        insert(PaymentEvent)
        .values(
            event_id=message.event_id,
            type=message_type,
            user_id=message.user_id,
            payload=message.stored_payload(),
            payload_hash=digest,
            status=EventStatus.RECEIVED,
            recovery_point=STARTED,
            progress={},
            queue=queue,
            sealed_token=sealed_token,
        )
        .on_conflict_do_nothing(index_elements=["event_id"])
    )
    event = _locked(session, message.event_id)
    assert event is not None  # inserted above or already there; rows are never deleted
    if event.payload_hash != digest or event.type != message_type:
        raise _conflict(event, message_type)
    return _take(event, owner, lease_seconds)


def reclaim(
    session: Session, event_id: str, owner: str, lease_seconds: int
) -> tuple[ClaimOutcome, PaymentEvent] | None:
    """Take the lease of a known event for a re-drive; None if the event is unknown."""
    event = _locked(session, event_id)
    if event is None:
        return None
    return _take(event, owner, lease_seconds), event


def _take(event: PaymentEvent, owner: str, lease_seconds: int) -> ClaimOutcome:
    if event.status in TERMINAL_STATUSES:
        return AlreadyFinished(event.status)
    moment = now()
    if event.locked_until is not None and event.locked_until > moment and event.locked_by != owner:
        return Busy(event.locked_until)
    event.status = EventStatus.PROCESSING
    event.attempts += 1
    event.locked_by = owner
    event.locked_until = moment + timedelta(seconds=lease_seconds)
    event.next_attempt_at = None
    return Claim(
        event_id=event.event_id,
        owner=owner,
        recovery_point=event.recovery_point,
        progress=dict(event.progress or {}),
        generation=event.generation,
        attempts=event.attempts,
        transient_failures=event.transient_failures,
        created_at=event.created_at,
    )


def owned(session: Session, claim: Claim) -> PaymentEvent:
    """The event row, locked, after checking that our lease still stands.

    Raises:
        LeaseLost: another worker owns the event now, or it is already finished.
    """
    event = _locked(session, claim.event_id)
    if event is None or event.locked_by != claim.owner or event.status in TERMINAL_STATUSES:
        raise LeaseLost(f"event {claim.event_id!r} is no longer ours")
    return event


def checkpoint(
    session: Session, claim: Claim, point: str, lease_seconds: int, **progress: Any
) -> None:
    """Record a recovery point (and what was learnt) and extend the lease."""
    event = owned(session, claim)
    event.recovery_point = point
    event.progress = {**(event.progress or {}), **progress}
    event.locked_until = now() + timedelta(seconds=lease_seconds)


def forget_token(session: Session, claim: Claim) -> None:
    """Drop the sealed card token once the attach is settled and it can never be needed."""
    owned(session, claim).sealed_token = None


def bury_unrecoverable(event: PaymentEvent, message: str) -> None:
    """Declare a locked event dead because it cannot be re-driven at all."""
    _finish(event, EventStatus.DEAD, code="retries_exhausted", message=message)


def succeed(session: Session, claim: Claim, result: dict[str, Any]) -> None:
    """Mark the event succeeded with its result; final."""
    event = owned(session, claim)
    _finish(event, EventStatus.SUCCEEDED, result=result)


def fail(
    session: Session, claim: Claim, code: str, message: str, result: dict[str, Any] | None = None
) -> None:
    """Mark the event failed (a permanent business outcome); final."""
    event = owned(session, claim)
    _finish(event, EventStatus.FAILED, result=result, code=code, message=message)


def _finish(
    event: PaymentEvent,
    status: EventStatus,
    *,
    result: dict[str, Any] | None = None,
    code: str | None = None,
    message: str | None = None,
) -> None:
    event.status = status
    event.result = result
    event.error_code = code
    event.error_message = redact(message) if message else None
    event.completed_at = now()
    if status != EventStatus.DEAD:
        event.sealed_token = None  # a dead event may be replayed and need its token again
    event.locked_by = None
    event.locked_until = None
    event.next_attempt_at = None


def retry_later(
    session: Session,
    claim: Claim,
    error: str,
    *,
    counts: bool,
    max_attempts: int,
    delay_for: Callable[[int], float],
) -> float | None:
    """Give the lease back until the next attempt; returns its delay in seconds.

    A failure that `counts` spends the retry budget; when the budget is spent the event is
    buried as dead instead and None is returned.
    """
    event = owned(session, claim)
    if counts:
        event.transient_failures += 1
        if event.transient_failures >= max_attempts:
            _finish(
                event,
                EventStatus.DEAD,
                code="retries_exhausted",
                message=f"gave up after {event.transient_failures} transient failures;"
                f" last: {error}",
            )
            return None
    delay = delay_for(max(1, event.transient_failures))
    event.last_error = redact(error)[:2000]
    event.locked_by = None
    event.locked_until = None
    event.next_attempt_at = now() + timedelta(seconds=delay)
    return delay


def record_invalid(
    session: Session,
    message_type: str,
    event_id: str,
    user_id: str | None,
    kwargs: dict[str, Any],
    error: str,
    *,
    queue: str,
) -> bool:
    """Store a message that failed validation as a failed event; False if a duplicate.

    Raises:
        IdempotencyConflict: the event_id is known with another payload.
    """
    payload = sanitize(kwargs)
    digest = _raw_digest(message_type, kwargs)
    result = session.execute(
        insert(PaymentEvent)
        .values(
            event_id=event_id,
            type=message_type,
            user_id=user_id,
            payload=payload,
            payload_hash=digest,
            status=EventStatus.FAILED,
            error_code="invalid_message",
            error_message=redact(error),
            recovery_point=STARTED,
            progress={},
            completed_at=now(),
            queue=queue,
        )
        .on_conflict_do_nothing(index_elements=["event_id"])
        .returning(PaymentEvent.event_id)
    )
    if result.scalar() is not None:
        return True
    event = _locked(session, event_id)
    assert event is not None
    if event.payload_hash != digest or event.type != message_type:
        raise _conflict(event, message_type)
    return False


def _raw_digest(message_type: str, kwargs: dict[str, Any]) -> str:
    body = json.dumps(
        {"type": message_type, "raw": kwargs}, sort_keys=True, default=repr, separators=(",", ":")
    )
    return hashlib.sha256(body.encode()).hexdigest()
