"""Counts of refused (not authenticated) messages: one row per UTC day and reason, bumped
by one statement per refusal; read by `payworker status`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import Connection, Table, func, literal, select
from sqlalchemy.dialects.postgresql import insert

from db.models import MessageRefusal

REFUSALS = cast(Table, MessageRefusal.__table__)
_today = func.timezone("UTC", func.now()).cast(REFUSALS.c.day.type)


def count_refusal(conn: Connection, reason: str) -> None:
    """Add one refusal for `reason` to today's count (UTC)."""
    stmt = insert(REFUSALS).values(day=_today, reason=reason, count=1, last_at=func.now())
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[REFUSALS.c.day, REFUSALS.c.reason],
            set_={"count": REFUSALS.c.count + 1, "last_at": stmt.excluded.last_at},
        )
    )


@dataclass(frozen=True)
class RefusalSummary:
    """Refusals today and over the last `days` days (today included), by reason."""

    days: int
    today: dict[str, int]
    recent: dict[str, int]
    last_at: datetime | None

    @property
    def today_total(self) -> int:
        return sum(self.today.values())

    @property
    def recent_total(self) -> int:
        return sum(self.recent.values())


def refusal_summary(conn: Connection, days: int = 7) -> RefusalSummary:
    """What `payworker status` shows about refused messages."""
    r = REFUSALS.c
    rows = conn.execute(
        select(r.reason, (r.day == _today).label("today"), r.count.label("n"), r.last_at).where(
            r.day > _today - literal(days)
        )
    ).all()
    today: dict[str, int] = {}
    recent: dict[str, int] = {}
    for row in rows:
        recent[row.reason] = recent.get(row.reason, 0) + int(row.n)
        if row.today:
            today[row.reason] = today.get(row.reason, 0) + int(row.n)
    last_at = max((row.last_at for row in rows), default=None)
    return RefusalSummary(days=days, today=today, recent=recent, last_at=last_at)
