"""The payment_events ledger: claim an event, checkpoint it, and record its outcome.

Every function here runs inside a caller's short transaction and touches one event row.
The writes of a run (claim, checkpoint, outcome) are each one Core statement that checks
the lease in its WHERE clause and locks the row as it updates it, so two deliveries of one
event never interleave and a run that lost its lease writes nothing (LeaseLost). They run
once or more per charge, so they avoid the ORM's load-then-flush round trips. The rarer
paths (a re-drive, a retry, an invalid message) keep the ORM's SELECT … FOR UPDATE."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from db.models import TERMINAL_STATUSES, EventStatus, PaymentEvent
from tasks import ledger_sql as sql
from tasks.errors import IdempotencyConflict, PayworkerError
from tasks.messages import Message
from tasks.redact import redact, sanitize

STARTED = "started"
# The caller's transaction: an ORM session, or a plain connection on the hot path.
Executor = Session | Connection
# How often a claim is tried again when the row changed between the upsert and the look at
# why it was refused (a lease that ran out just then, an event replayed from dead).
_CLAIM_TRIES = 3

_events = sql.EVENTS


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


def _conflict(event_id: str, first_type: str, message_type: str) -> IdempotencyConflict:
    return IdempotencyConflict(
        f"event {event_id!r} was first received as {first_type} with another payload;"
        f" this {message_type} delivery is rejected and the first one stands",
    )


def claim(
    session: Executor,
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
    values: dict[str, Any] = {
        "event_id": message.event_id,
        "type": message_type,
        "user_id": message.user_id,
        "payload": message.stored_payload(),
        "payload_hash": message.fingerprint(),
        "queue": queue,
        "sealed_token": sealed_token,
        "owner": owner,
    }
    for _ in range(_CLAIM_TRIES):
        moment = now()
        until = moment + timedelta(seconds=lease_seconds)
        row = session.execute(
            sql.CLAIM, {**values, "point": STARTED, "now": moment, "until": until}
        ).one_or_none()
        if row is not None:
            return _claim_of(row, message.event_id, owner)
        refused = _why_refused(
            session, message.event_id, message_type, values["payload_hash"], owner
        )
        if refused is not None:
            return refused
    return Busy(now())  # the row keeps changing under us: another delivery is at work


def _why_refused(
    session: Executor, event_id: str, message_type: str, digest: str, owner: str
) -> ClaimOutcome | None:
    """Why the claim took nothing: a conflict, a finished event or a live lease; None when
    the row has become claimable since (try again)."""
    row = session.execute(
        select(
            _events.c.type, _events.c.payload_hash, _events.c.status, _events.c.locked_by,
            _events.c.locked_until,
        ).where(_events.c.event_id == event_id)
    ).one()  # fmt: skip
    if row.payload_hash != digest or row.type != message_type:
        raise _conflict(event_id, row.type, message_type)
    if row.status in TERMINAL_STATUSES:
        return AlreadyFinished(row.status)
    if row.locked_until is not None and row.locked_until > now() and row.locked_by != owner:
        return Busy(row.locked_until)
    return None


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
    return _claim_of(event, event.event_id, owner)


def _claim_of(row: Any, event_id: str, owner: str) -> Claim:
    """The claim held on an event, from its row (an ORM object or a RETURNING row)."""
    return Claim(
        event_id=event_id,
        owner=owner,
        recovery_point=row.recovery_point,
        progress=dict(row.progress or {}),
        generation=row.generation,
        attempts=row.attempts,
        transient_failures=row.transient_failures,
        created_at=row.created_at,
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


def _write_owned(session: Executor, claim: Claim, values: dict[str, Any]) -> None:
    """Update the event while it is ours.

    Raises:
        LeaseLost: another worker owns the event now, or it is already finished.
    """
    stmt = sql.update_while_owned(tuple(sorted(values)))
    params = {f"v_{name}": value for name, value in values.items()}
    params.update(b_event_id=claim.event_id, b_owner=claim.owner)
    if session.execute(stmt, params).first() is None:
        raise LeaseLost(f"event {claim.event_id!r} is no longer ours")


def checkpoint(
    session: Executor, claim: Claim, point: str, lease_seconds: int, **progress: Any
) -> None:
    """Record a recovery point (and what was learnt) and extend the lease.

    Raises:
        LeaseLost: another worker owns the event now, or it is already finished.
    """
    _write_owned(
        session,
        claim,
        {
            "recovery_point": point,
            "progress": progress,
            "locked_until": now() + timedelta(seconds=lease_seconds),
        },
    )


def forget_token(session: Executor, claim: Claim) -> None:
    """Drop the sealed card token once the attach is settled and it can never be needed."""
    _write_owned(session, claim, {"sealed_token": None})


def bury_unrecoverable(event: PaymentEvent, message: str) -> None:
    """Declare a locked event dead because it cannot be re-driven at all."""
    _finish(event, EventStatus.DEAD, code="retries_exhausted", message=message)


def succeed(session: Executor, claim: Claim, result: dict[str, Any]) -> None:
    """Mark the event succeeded with its result; final.

    Raises:
        LeaseLost: another worker owns the event now, or it is already finished.
    """
    _write_owned(session, claim, _final(EventStatus.SUCCEEDED, result=result))


def fail(
    session: Executor,
    claim: Claim,
    code: str,
    message: str,
    result: dict[str, Any] | None = None,
) -> None:
    """Mark the event failed (a permanent business outcome); final.

    Raises:
        LeaseLost: another worker owns the event now, or it is already finished.
    """
    _write_owned(
        session, claim, _final(EventStatus.FAILED, result=result, code=code, message=message)
    )


def _final(
    status: EventStatus,
    *,
    result: dict[str, Any] | None = None,
    code: str | None = None,
    message: str | None = None,
) -> dict[str, Any]:
    """The columns of a final outcome."""
    values: dict[str, Any] = {
        "status": status,
        "result": result,
        "error_code": code,
        "error_message": redact(message) if message else None,
        "completed_at": now(),
        "locked_by": None,
        "locked_until": None,
        "next_attempt_at": None,
    }
    if status != EventStatus.DEAD:
        values["sealed_token"] = None  # a dead event may be replayed and need its token again
    return values


def _finish(
    event: PaymentEvent,
    status: EventStatus,
    *,
    result: dict[str, Any] | None = None,
    code: str | None = None,
    message: str | None = None,
) -> None:
    """The same outcome written through a loaded row (re-drives and retries)."""
    for column, value in _final(status, result=result, code=code, message=message).items():
        setattr(event, column, value)


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
        raise _conflict(event_id, event.type, message_type)
    return False


def _raw_digest(message_type: str, kwargs: dict[str, Any]) -> str:
    body = json.dumps(
        {"type": message_type, "raw": kwargs}, sort_keys=True, default=repr, separators=(",", ":")
    )
    return hashlib.sha256(body.encode()).hexdigest()
