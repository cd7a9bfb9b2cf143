"""Leadership of a queue's periodic duties, and their record in `payworker_duties`.

One worker per queue leads: the one whose dedicated connection holds the queue's
session-level advisory lock. Postgres releases the lock when that session ends, so a
killed leader (its socket closed by the kernel) or a vanished one (its TCP keepalives
unanswered) frees it for another worker without any timeout of ours."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Engine, Table, create_engine, event, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.pool import NullPool

from db.models import Duty

DUTIES = cast(Table, Duty.__table__)

# Keys of our leader locks have this bit set and are positive: above every int4, so they
# never meet the per-user locks (`hashtext`, 32 bits, db/users.py) in Postgres' one
# advisory key space.
_KEY_BIT = 1 << 62


def leader_key(queue: str) -> int:
    """The advisory lock key of `queue`'s leadership (64-bit: two queues never share one)."""
    digest = hashlib.sha256(f"payworker:duties:{queue}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") & (_KEY_BIT - 1)) | _KEY_BIT


def try_lead(conn: Connection, queue: str) -> bool:
    """Take `queue`'s leadership for this session if it is free; True if held now."""
    held: bool = conn.execute(select(func.pg_try_advisory_lock(leader_key(queue)))).scalar_one()
    return held


def step_down(conn: Connection, queue: str) -> None:
    """Give `queue`'s leadership back (closing the session does the same)."""
    conn.execute(select(func.pg_advisory_unlock(leader_key(queue))))


def lock_holders(conn: Connection, queues: list[str]) -> set[str]:
    """Those of `queues` whose leadership lock some session holds now."""
    if not queues:
        return set()
    by_parts = {divmod(leader_key(q), 1 << 32): q for q in queues}
    rows = conn.execute(
        text(
            "SELECT classid::int8 AS hi, objid::int8 AS lo FROM pg_locks"
            " WHERE locktype = 'advisory' AND granted AND objsubid = 1"
        )
    )
    return {by_parts[key] for row in rows if (key := (row.hi, row.lo)) in by_parts}


def take_leadership(conn: Connection, queue: str, periods: dict[str, float], leader: str) -> None:
    """Record `leader` as the leader of `queue`'s duties (name -> period), from now."""
    for name, period in periods.items():
        stmt = insert(DUTIES).values(
            queue=queue, name=name, leader=leader, leader_since=func.now(), period_seconds=period
        )
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["queue", "name"],
                set_={
                    "leader": stmt.excluded.leader,
                    "leader_since": stmt.excluded.leader_since,
                    "period_seconds": stmt.excluded.period_seconds,
                    "updated_at": func.now(),
                },
            )
        )


def leave(conn: Connection, queue: str, leader: str) -> None:
    """Clear `leader`'s name from `queue`'s duties (a clean shutdown)."""
    d = DUTIES.c
    conn.execute(update(DUTIES).where(d.queue == queue, d.leader == leader).values(leader=None))


def record_run(conn: Connection, queue: str, name: str, result: dict[str, Any]) -> None:
    """A run of the duty ended well now, with `result`."""
    d = DUTIES.c
    conn.execute(
        update(DUTIES)
        .where(d.queue == queue, d.name == name)
        .values(last_run_at=func.now(), last_result=result)
    )


def record_failure(conn: Connection, queue: str, name: str, error: str) -> None:
    """A run of the duty failed now with `error` (its last good run stays recorded)."""
    d = DUTIES.c
    conn.execute(
        update(DUTIES)
        .where(d.queue == queue, d.name == name)
        .values(last_error=error, last_error_at=func.now())
    )


@dataclass(frozen=True)
class DutyRow:
    """A duty as `payworker status` and the metrics read it."""

    queue: str
    name: str
    leader: str | None
    leader_since: datetime | None
    period_seconds: float
    last_run_at: datetime | None
    last_result: dict[str, Any] | None
    last_error: str | None
    last_error_at: datetime | None
    # Some session holds the queue's leadership lock right now.
    lock_held: bool


def read_duties(conn: Connection, queue: str | None = None) -> list[DutyRow]:
    """The duties of every queue (or of `queue`), by queue and name."""
    d = DUTIES.c
    stmt = select(
        d.queue, d.name, d.leader, d.leader_since, d.period_seconds, d.last_run_at,
        d.last_result, d.last_error, d.last_error_at,
    ).order_by(d.queue, d.name)  # fmt: skip
    if queue is not None:
        stmt = stmt.where(d.queue == queue)
    rows = conn.execute(stmt).all()
    held = lock_holders(conn, sorted({row.queue for row in rows}))
    return [DutyRow(**row._mapping, lock_held=row.queue in held) for row in rows]


def leadership_engine(database_url: str, *, queue: str, dead_after: int) -> Engine:
    """An engine of single connections for a leader's one dedicated session: no pool (a
    session lost is never handed out again: its lock is gone with it), and TCP keepalives
    on both ends, so that a session whose peer vanished (host down, network cut) ends
    within about `dead_after` seconds on the server, releasing the lock, and on the client,
    which then stops leading. Kept apart from the tasks' engines (db/session.py)."""
    idle, interval, count = max(1, dead_after // 3), max(1, dead_after // 9), 3
    engine = create_engine(
        database_url,
        poolclass=NullPool,
        hide_parameters=True,
        connect_args={
            "application_name": f"payworker duties {queue}"[:63],
            "connect_timeout": 5,
            "keepalives": 1,
            "keepalives_idle": idle,
            "keepalives_interval": interval,
            "keepalives_count": count,
            "tcp_user_timeout": dead_after * 1000,
        },
    )

    @event.listens_for(engine, "connect")
    def _server_side(dbapi_connection: Any, _record: Any) -> None:
        # The server's view of the same session: without these it would keep a vanished
        # leader's session, and its lock, for the kernel's two hours. A statement of the
        # leader never waits longer than that either.
        with dbapi_connection.cursor() as cursor:
            for name, value in (
                ("tcp_keepalives_idle", idle),
                ("tcp_keepalives_interval", interval),
                ("tcp_keepalives_count", count),
                ("tcp_user_timeout", dead_after * 1000),
                ("statement_timeout", dead_after * 1000),
            ):
                cursor.execute(f"SET {name} = {int(value)}")
        dbapi_connection.commit()

    return engine
