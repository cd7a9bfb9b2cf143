"""How a delivery gets an event of the payment_events ledger: the claim of a new or known
event, the re-drive's reclaim, and the record of a message that never validated.

Each runs in a caller's short transaction; a claim is one statement (db/ledger_sql.py)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, select
from sqlalchemy.dialects.postgresql import insert

from core.errors import IdempotencyConflict, clip
from core.redact import redact, sanitize
from db import ledger_sql as sql
from db.ledger import STARTED, Claim, now
from db.models import TERMINAL_STATUSES, EventStatus

# How often a claim is tried again when the row changed between the upsert and the look at
# why it was refused (a lease that ran out just then, an event replayed from dead).
_CLAIM_TRIES = 3

_events = sql.EVENTS


@dataclass(frozen=True)
class Busy:
    """Another delivery of the event holds a live lease."""

    until: datetime


@dataclass(frozen=True)
class AlreadyFinished:
    """The event reached a final status before; this delivery is a duplicate."""

    status: str


ClaimOutcome = Claim | Busy | AlreadyFinished


@dataclass(frozen=True)
class NewEvent:
    """What a first delivery writes into the ledger."""

    event_id: str
    type: str
    user_id: str
    payload: dict[str, Any]
    payload_hash: str
    queue: str
    sealed_token: str | None = None


@dataclass(frozen=True)
class StoredEvent:
    """An event's message as the ledger keeps it, for a re-drive."""

    type: str
    user_id: str | None
    payload: dict[str, Any]
    sealed_token: str | None


def _conflict(event_id: str, first_type: str, message_type: str) -> IdempotencyConflict:
    return IdempotencyConflict(
        f"event {event_id!r} was first received as {first_type} with another payload;"
        f" this {message_type} delivery is rejected and the first one stands",
    )


def claim(conn: Connection, event: NewEvent, owner: str, lease_seconds: int) -> ClaimOutcome:
    """Create the event row if new, then take its lease unless it is finished or held.

    Raises:
        IdempotencyConflict: the event_id is known with another type or payload.
    """
    values = {**event.__dict__, "owner": owner}
    for _ in range(_CLAIM_TRIES):
        moment = now()
        until = moment + timedelta(seconds=lease_seconds)
        row = conn.execute(
            sql.CLAIM, {**values, "point": STARTED, "now": moment, "until": until}
        ).one_or_none()
        if row is not None:
            return _claim_of(row, event.event_id, owner)
        refused = _why_refused(conn, event.event_id, event.type, event.payload_hash, owner)
        if refused is not None:
            return refused
    return Busy(now())  # the row keeps changing under us: another delivery is at work


def _why_refused(
    conn: Connection, event_id: str, message_type: str | None, digest: str | None, owner: str
) -> ClaimOutcome | None:
    """Why a claim took nothing: a conflict, a finished event or a live lease; None when
    the row has become claimable since (try again). `digest` None skips the payload check
    (a re-drive names the event only)."""
    row = conn.execute(
        select(
            _events.c.type, _events.c.payload_hash, _events.c.status, _events.c.locked_by,
            _events.c.locked_until,
        ).where(_events.c.event_id == event_id)
    ).one()  # fmt: skip
    if digest is not None and (row.payload_hash != digest or row.type != message_type):
        raise _conflict(event_id, row.type, str(message_type))
    if row.status in TERMINAL_STATUSES:
        return AlreadyFinished(row.status)
    if row.locked_until is not None and row.locked_until > now() and row.locked_by != owner:
        return Busy(row.locked_until)
    return None


def reclaim(
    conn: Connection, event_id: str, owner: str, lease_seconds: int
) -> tuple[ClaimOutcome, StoredEvent | None] | None:
    """Take the lease of a known event for a re-drive; None if the event is unknown. The
    stored message comes with a successful claim only.

    The row is locked before it is judged: a re-drive published inside the transaction
    that reopened the event (a replay, a sweep) waits here for that commit, and then sees
    the event reopened. (An UPDATE whose WHERE did not match the row as it was before
    that commit would not wait, and would find nothing to take.)"""
    e = _events.c
    row = conn.execute(
        select(e.status, e.locked_by, e.locked_until)
        .where(e.event_id == event_id)
        .with_for_update()
    ).first()
    if row is None:
        return None
    moment = now()
    if row.status in TERMINAL_STATUSES:
        return AlreadyFinished(row.status), None
    if row.locked_until is not None and row.locked_until > moment and row.locked_by != owner:
        return Busy(row.locked_until), None
    taken = conn.execute(
        sql.RECLAIM,
        {
            "b_event_id": event_id,
            "owner": owner,
            "now": moment,
            "until": moment + timedelta(seconds=lease_seconds),
        },
    ).one()
    stored = StoredEvent(taken.type, taken.user_id, dict(taken.payload), taken.sealed_token)
    return _claim_of(taken, event_id, owner), stored


def _claim_of(row: Any, event_id: str, owner: str) -> Claim:
    """The claim held on an event, from a RETURNING row."""
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


def record_invalid(
    conn: Connection,
    message_type: str,
    event_id: str,
    user_id: str | None,
    kwargs: dict[str, Any],
    error: str,
    *,
    queue: str,
    stored: dict[str, Any] | None = None,
) -> bool:
    """Store a message that failed validation as a failed event; False if a duplicate.
    The ledger keeps `stored` (the message with refused free text replaced, or a summary)
    when given, else the kwargs, sanitised either way. The payload hash is taken over that
    stored copy: a hash of the raw message could be searched for a refused card number
    (a PAN has too few unknown digits to hide in a plain sha256).

    Raises:
        IdempotencyConflict: the event_id is known with another payload.
    """
    payload = sanitize(kwargs if stored is None else stored)
    digest = _raw_digest(message_type, payload)
    inserted = conn.execute(
        insert(_events)
        .values(
            event_id=event_id,
            type=message_type,
            user_id=user_id,
            payload=payload,
            payload_hash=digest,
            status=EventStatus.FAILED,
            error_code="invalid_message",
            error_message=clip(redact(error)),
            recovery_point=STARTED,
            progress={},
            completed_at=now(),
            queue=queue,
        )
        .on_conflict_do_nothing(index_elements=["event_id"])
        .returning(_events.c.event_id)
    )
    if inserted.scalar() is not None:
        return True
    row = conn.execute(
        select(_events.c.type, _events.c.payload_hash)
        .where(_events.c.event_id == event_id)
        .with_for_update()
    ).one()
    if row.payload_hash != digest or row.type != message_type:
        raise _conflict(event_id, row.type, message_type)
    return False


def _raw_digest(message_type: str, payload: Any) -> str:
    body = json.dumps(
        {"type": message_type, "raw": payload}, sort_keys=True, default=repr, separators=(",", ":")
    )
    return hashlib.sha256(body.encode()).hexdigest()
