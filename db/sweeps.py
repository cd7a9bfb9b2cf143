"""The periodic duties' statements: take the unfinished events of a queue that are due
again (the sweep), and erase card tokens kept too long (the token expiry)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, and_, case, literal, or_, select, update

from db.ledger_sql import EVENTS
from db.models import UNFINISHED_STATUSES, EventStatus

LEASE_EXPIRED = "lease_expired"  # the worker died or was killed mid-event
RETRY_DUE = "retry_due"  # a scheduled retry (or a wait for a prerequisite) has come
UNCLAIMED = "unclaimed"  # recorded but never picked up: its message was lost


@dataclass(frozen=True)
class Due:
    """An event to publish again: its re-drive message names the event's own task."""

    event_id: str
    reason: str
    type: str
    user_id: str | None


def take_due(
    conn: Connection, queue: str, moment: datetime, grace_seconds: float, limit: int
) -> list[Due]:
    """Unfinished events of `queue` that nobody is working on and that are due, marked as
    re-driven: an expired lease is dropped and the next check set `grace_seconds` ahead,
    so that a lost publish is repeated but a message still on its way is not doubled at
    every pass. Rows a concurrent sweeper holds are skipped; the rest stay locked until
    the caller's transaction ends (publish the re-drives before it does)."""
    e = EVENTS.c
    stale = moment - timedelta(seconds=grace_seconds)
    unlocked = e.locked_until.is_(None)
    reason = case(
        (e.locked_until.is_not(None), literal(LEASE_EXPIRED)),
        (e.next_attempt_at.is_not(None), literal(RETRY_DUE)),
        else_=literal(UNCLAIMED),
    )
    due = (
        select(e.event_id, reason.label("reason"))
        .where(
            e.queue == queue,
            e.status.in_(UNFINISHED_STATUSES),
            or_(
                e.locked_until < moment,
                and_(unlocked, e.next_attempt_at <= moment),
                and_(unlocked, e.next_attempt_at.is_(None), e.updated_at < stale),
            ),
        )
        .order_by(e.next_attempt_at.nulls_first(), e.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .cte("due")
    )
    rows = conn.execute(
        update(EVENTS)
        .where(e.event_id == due.c.event_id)
        .values(
            locked_by=None,
            locked_until=None,
            next_attempt_at=moment + timedelta(seconds=grace_seconds),
            redrives=e.redrives + 1,
        )
        .returning(e.event_id, due.c.reason, e.type, e.user_id)
    )
    return [Due(row.event_id, row.reason, row.type, row.user_id) for row in rows]


def erase_sealed_tokens(conn: Connection, queue: str, received_before: datetime) -> int:
    """Erase the sealed card tokens of `queue`'s events that no longer need one: final
    and not dead (erased when they finish; this catches any left behind), or first
    received before `received_before` whatever their status. Returns how many. A dead
    event erased here can no longer be replayed at a point that needs its token: the
    replay refuses it. `updated_at` is kept: erasing is no change of the event's course."""
    e = EVENTS.c
    erased = conn.execute(
        update(EVENTS)
        .where(
            e.queue == queue,
            e.sealed_token.is_not(None),
            or_(
                e.status.in_([EventStatus.SUCCEEDED, EventStatus.FAILED]),
                e.created_at < received_before,
            ),
        )
        .values(sealed_token=None, updated_at=e.updated_at)
    )
    return int(erased.rowcount or 0)
