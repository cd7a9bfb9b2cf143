"""The ledger as an operator reads it: the statements behind `payworker events list`,
`events show` and `status`. Read-only, on the caller's connection; typed rows out.

The sealed card token is never read here: a row says only whether there is one."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select

from db.duties import DutyRow, read_duties
from db.ledger_sql import EVENTS
from db.models import UNFINISHED_STATUSES

UNFINISHED = UNFINISHED_STATUSES


@dataclass(frozen=True)
class EventRecord:
    """A whole ledger row, its columns in table order, the sealed token as `sealed`."""

    event_id: str
    type: str
    user_id: str | None
    payload: dict[str, Any]
    payload_hash: str
    status: str
    error_code: str | None
    error_message: str | None
    attempts: int
    result: dict[str, Any] | None
    recovery_point: str
    progress: dict[str, Any]
    transient_failures: int
    last_error: str | None
    locked_by: str | None
    locked_until: datetime | None
    next_attempt_at: datetime | None
    generation: int
    queue: str | None
    sealed: bool  # a sealed card token is kept (column sealed_token)
    redrives: int
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None


@dataclass(frozen=True)
class EventLine:
    """One event as `payworker events list` shows it."""

    event_id: str
    type: str
    user_id: str | None
    status: str
    error_code: str | None
    error_message: str | None
    last_error: str | None
    attempts: int
    transient_failures: int
    generation: int
    recovery_point: str
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None


@dataclass(frozen=True)
class StatusOverview:
    """What `payworker status` shows, as of `moment` (the database's clock)."""

    moment: datetime
    # (type, status) -> count
    counts: Mapping[tuple[str, str], int]
    # Unfinished and nobody on it: the sweeper publishes these on its next pass.
    retry_due: int
    # Unfinished with a retry (or a prerequisite wait) scheduled later.
    retry_waiting: int
    # Held by a worker right now (live lease).
    running: int
    # Lease ran out: the worker died; the sweeper re-drives these.
    lease_expired: int
    oldest_unfinished: EventRecord | None
    # The periodic duties of the queue asked about (none recorded: an empty list).
    duties: list[DutyRow] = field(default_factory=list)

    @property
    def types(self) -> list[str]:
        return sorted({t for t, _ in self.counts})

    def by_status(self, status: str) -> int:
        return sum(n for (_, s), n in self.counts.items() if s == status)


_e = EVENTS.c
_RECORD = (
    _e.event_id, _e.type, _e.user_id, _e.payload, _e.payload_hash, _e.status, _e.error_code,
    _e.error_message, _e.attempts, _e.result, _e.recovery_point, _e.progress,
    _e.transient_failures, _e.last_error, _e.locked_by, _e.locked_until, _e.next_attempt_at,
    _e.generation, _e.queue, _e.sealed_token.is_not(None).label("sealed"), _e.redrives,
    _e.created_at, _e.updated_at, _e.completed_at,
)  # fmt: skip
_LINE = (
    _e.event_id, _e.type, _e.user_id, _e.status, _e.error_code, _e.error_message,
    _e.last_error, _e.attempts, _e.transient_failures, _e.generation, _e.recovery_point,
    _e.created_at, _e.updated_at, _e.completed_at,
)  # fmt: skip


def event_record(conn: Connection, event_id: str) -> EventRecord | None:
    """The whole row of one event; None if unknown."""
    row = conn.execute(select(*_RECORD).where(_e.event_id == event_id)).first()
    return EventRecord(**row._mapping) if row is not None else None


def list_events(
    conn: Connection,
    *,
    status: str | None = None,
    type_: str | None = None,
    since: datetime | None = None,
    limit: int = 100,
) -> list[EventLine]:
    """Events, most recently changed first; `since` filters on the last change."""
    stmt = select(*_LINE).order_by(_e.updated_at.desc(), _e.event_id)
    if status is not None:
        stmt = stmt.where(_e.status == status)
    if type_ is not None:
        stmt = stmt.where(_e.type == type_)
    if since is not None:
        stmt = stmt.where(_e.updated_at >= since)
    return [EventLine(**row._mapping) for row in conn.execute(stmt.limit(limit))]


def status_overview(conn: Connection, queue: str | None = None) -> StatusOverview:
    """Counts by type and status, the schedule of unfinished events, the oldest of them,
    and the periodic duties of `queue` (none without one)."""
    unfinished = _e.status.in_(UNFINISHED)
    moment: datetime = conn.execute(select(func.now())).scalar_one()
    counts = conn.execute(
        select(_e.type, _e.status, func.count().label("n")).group_by(_e.type, _e.status)
    ).all()
    unlocked = _e.locked_until.is_(None)
    count = func.count().filter
    retry_due, retry_waiting, running, lease_expired = conn.execute(
        select(
            count(unlocked & (_e.next_attempt_at <= moment)),
            count(unlocked & (_e.next_attempt_at > moment)),
            count(_e.locked_until > moment),
            count(_e.locked_until <= moment),
        ).where(unfinished)
    ).one()
    oldest = conn.execute(
        select(*_RECORD).where(unfinished).order_by(_e.created_at).limit(1)
    ).first()
    return StatusOverview(
        moment=moment,
        counts={(row.type, row.status): int(row.n) for row in counts},
        retry_due=int(retry_due),
        retry_waiting=int(retry_waiting),
        running=int(running),
        lease_expired=int(lease_expired),
        oldest_unfinished=EventRecord(**oldest._mapping) if oldest is not None else None,
        duties=read_duties(conn, queue) if queue is not None else [],
    )
