"""The ledger's statements on the hot path, built once so that SQLAlchemy compiles each of
them once: the one-statement claim, and the UPDATE that writes only while a run's lease
stands. db/ledger.py says what they mean."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, case, func, literal_column, or_, update
from sqlalchemy.dialects.postgresql import JSONB, insert

from db.models import TERMINAL_STATUSES, EventStatus, PaymentEvent

EVENTS = cast(Table, PaymentEvent.__table__)
TERMINAL = sorted(TERMINAL_STATUSES)
# A claimed event is `processing`, except one that waits for its customer: it stays
# `action_required` while a run reads its PaymentIntent again, so an app polling the
# ledger never sees it flicker.
CLAIMED_STATUS = case(
    (EVENTS.c.status == EventStatus.ACTION_REQUIRED, EVENTS.c.status),
    else_=literal_column(f"'{EventStatus.PROCESSING.value}'"),
)


def _claim() -> Any:
    """One round trip: insert the event already claimed, or take the lease of the known
    row when it has the same type and payload, is unfinished and its lease is free (or
    ours); returns nothing otherwise. ON CONFLICT locks the row while it decides."""
    stmt = insert(EVENTS).values(
        event_id=bindparam("event_id"),
        type=bindparam("type"),
        user_id=bindparam("user_id"),
        payload=bindparam("payload", type_=JSONB),
        payload_hash=bindparam("payload_hash"),
        status=EventStatus.PROCESSING,
        attempts=1,
        recovery_point=bindparam("point"),
        progress=literal_column("'{}'::jsonb"),
        queue=bindparam("queue"),
        sealed_token=bindparam("sealed_token"),
        locked_by=bindparam("owner"),
        locked_until=bindparam("until"),
    )
    row = EVENTS.c
    return stmt.on_conflict_do_update(
        index_elements=[row.event_id],
        set_={
            "status": CLAIMED_STATUS,
            "attempts": row.attempts + 1,
            "locked_by": stmt.excluded.locked_by,
            "locked_until": stmt.excluded.locked_until,
            "next_attempt_at": None,
            "updated_at": func.now(),  # ON CONFLICT does not apply the column's onupdate
        },
        where=and_(
            row.payload_hash == stmt.excluded.payload_hash,
            row.type == stmt.excluded.type,
            row.status.not_in(TERMINAL),
            or_(
                row.locked_until.is_(None),
                row.locked_until <= bindparam("now"),
                row.locked_by == stmt.excluded.locked_by,
            ),
        ),
    ).returning(
        row.recovery_point,
        row.progress,
        row.generation,
        row.attempts,
        row.transient_failures,
        row.created_at,
    )


CLAIM = _claim()


def _reclaim() -> Any:
    """A re-drive's claim: take the lease of an unfinished event whose lease is free (or
    ours), and return the stored message with the claim."""
    row = EVENTS.c
    return (
        update(EVENTS)
        .where(
            row.event_id == bindparam("b_event_id"),
            row.status.not_in(TERMINAL),
            or_(
                row.locked_until.is_(None),
                row.locked_until <= bindparam("now"),
                row.locked_by == bindparam("owner"),
            ),
        )
        .values(
            status=CLAIMED_STATUS,
            attempts=row.attempts + 1,
            locked_by=bindparam("owner"),
            locked_until=bindparam("until"),
            next_attempt_at=None,
        )
        .returning(
            row.recovery_point,
            row.progress,
            row.generation,
            row.attempts,
            row.transient_failures,
            row.created_at,
            row.type,
            row.user_id,
            row.payload,
            row.sealed_token,
        )
    )


RECLAIM = _reclaim()
# One more transient failure of a run that still holds its lease.
COUNT_FAILURE = (
    update(EVENTS)
    .where(
        EVENTS.c.event_id == bindparam("b_event_id"),
        EVENTS.c.locked_by == bindparam("b_owner"),
        EVENTS.c.status.not_in(TERMINAL),
    )
    .values(transient_failures=EVENTS.c.transient_failures + 1)
    .returning(EVENTS.c.transient_failures)
)


def _owned_update(columns: tuple[str, ...]) -> Any:
    """An UPDATE of `columns` (bound as `v_<column>`; progress is merged, not replaced)
    that matches only while the lease named by `b_event_id` and `b_owner` stands."""
    values: dict[str, Any] = {}
    for name in columns:
        column = EVENTS.c[name]
        value: Any = bindparam(f"v_{name}", type_=column.type)
        if name == "progress":
            value = func.coalesce(column, literal_column("'{}'::jsonb")).op(
                "||", return_type=JSONB
            )(value)
        values[name] = value
    return (
        update(EVENTS)
        .where(
            EVENTS.c.event_id == bindparam("b_event_id"),
            EVENTS.c.locked_by == bindparam("b_owner"),
            EVENTS.c.status.not_in(TERMINAL),
        )
        .values(values)
        .returning(EVENTS.c.event_id)
    )


_UPDATES: dict[tuple[str, ...], Any] = {}


def update_while_owned(columns: tuple[str, ...]) -> Any:
    """The lease-checked UPDATE of these columns, built once per set of columns."""
    stmt = _UPDATES.get(columns)
    if stmt is None:
        stmt = _UPDATES.setdefault(columns, _owned_update(columns))
    return stmt
