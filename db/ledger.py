"""The payment_events ledger while a run holds an event: move it on, record its outcome.

Every function here runs inside a caller's short transaction (a plain connection) and
touches one event row with Core statements (db/ledger_sql.py). A run's writes each check
the lease in their WHERE clause and lock the row as they update it, so two deliveries of
one event never interleave and a run that lost its lease writes nothing (LeaseLost).
What a write means (when to retry, when an event is dead) is decided in tasks/runner.py.
How a run gets its event in the first place is db/claims.py."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection

from core.errors import LeaseLost, clip
from core.redact import redact
from db import ledger_sql as sql
from db.models import EventStatus

STARTED = "started"
# The code of an event buried because it cannot go on.
RETRIES_EXHAUSTED = "retries_exhausted"

_events = sql.EVENTS


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Claim:
    """An event this worker now owns until its lease runs out."""

    event_id: str
    owner: str
    recovery_point: str
    progress: dict[str, Any]
    generation: int
    attempts: int
    transient_failures: int
    created_at: datetime

    def moved_to(self, point: str, progress: dict[str, Any]) -> Claim:
        """The same claim after a checkpoint at `point` that merged `progress`."""
        merged = {**self.progress, **progress}
        return Claim(**{**self.__dict__, "recovery_point": point, "progress": merged})


def _write_owned(conn: Connection, claim: Claim, values: dict[str, Any]) -> Any:
    """Update the event while it is ours; returns the RETURNING row.

    Raises:
        LeaseLost: another worker owns the event now, or it is already finished.
    """
    stmt = sql.update_while_owned(tuple(sorted(values)))
    params = {f"v_{name}": value for name, value in values.items()}
    params.update(b_event_id=claim.event_id, b_owner=claim.owner)
    row = conn.execute(stmt, params).first()
    if row is None:
        raise LeaseLost(f"event {claim.event_id!r} is no longer ours")
    return row


def checkpoint(
    conn: Connection,
    claim: Claim,
    point: str,
    progress: dict[str, Any],
    lease_seconds: int,
    *,
    forget_token: bool = False,
) -> Claim:
    """Record a recovery point (merging what was learnt into `progress`), extend the lease
    and, with `forget_token`, drop the sealed card token that can never be needed again.

    Raises:
        LeaseLost: another worker owns the event now, or it is already finished.
    """
    values: dict[str, Any] = {
        "recovery_point": point,
        "progress": progress,
        "locked_until": now() + timedelta(seconds=lease_seconds),
    }
    if forget_token:
        values["sealed_token"] = None
    _write_owned(conn, claim, values)
    return claim.moved_to(point, progress)


def succeed(conn: Connection, claim: Claim, result: dict[str, Any]) -> None:
    """Mark the event succeeded with its result; final.

    Raises:
        LeaseLost: another worker owns the event now, or it is already finished.
    """
    _write_owned(conn, claim, _final(EventStatus.SUCCEEDED, result=result))


def fail(
    conn: Connection, claim: Claim, code: str, message: str, result: dict[str, Any] | None
) -> None:
    """Mark the event failed (a permanent business outcome); final.

    Raises:
        LeaseLost: another worker owns the event now, or it is already finished.
    """
    _write_owned(conn, claim, _final(EventStatus.FAILED, result=result, code=code, message=message))


def bury(conn: Connection, claim: Claim, message: str) -> None:
    """Declare the event dead: an operator must look (`payworker replay`). Its sealed token
    stays, so that a replay can resume.

    Raises:
        LeaseLost: another worker owns the event now, or it is already finished.
    """
    _write_owned(conn, claim, _final(EventStatus.DEAD, code=RETRIES_EXHAUSTED, message=message))


def count_failure(conn: Connection, claim: Claim) -> int:
    """Add one transient failure to the event; returns how many it has had.

    Raises:
        LeaseLost: another worker owns the event now, or it is already finished.
    """
    row = conn.execute(
        sql.COUNT_FAILURE, {"b_event_id": claim.event_id, "b_owner": claim.owner}
    ).first()
    if row is None:
        raise LeaseLost(f"event {claim.event_id!r} is no longer ours")
    return int(row.transient_failures)


def release(conn: Connection, claim: Claim, *, retry_at: datetime, error: str) -> None:
    """Give the lease back until `retry_at`, when the sweeper publishes the event again.

    Raises:
        LeaseLost: another worker owns the event now, or it is already finished.
    """
    values = {
        "last_error": clip(redact(error)),
        "locked_by": None,
        "locked_until": None,
        "next_attempt_at": retry_at,
    }
    _write_owned(conn, claim, values)


def watch(
    conn: Connection,
    claim: Claim,
    *,
    point: str,
    progress: dict[str, Any],
    until: datetime,
    action: tuple[str, str, dict[str, Any]] | None,
) -> None:
    """Give the lease back until `until`, when the sweeper re-drives the event to read
    Stripe again at `point`, and start the retry budget afresh. With `action` (error code,
    message, result) the event waits for its customer: status `action_required` with that
    result (what the app needs to bring the customer back); without, it stays `processing`
    (Stripe is still working).

    Raises:
        LeaseLost: another worker owns the event now, or it is already finished.
    """
    values: dict[str, Any] = {
        "recovery_point": point,
        "progress": progress,
        "locked_by": None,
        "locked_until": None,
        "next_attempt_at": until,
        # Stripe answered: the retry budget is for one stretch of trouble, not for the
        # whole of a wait that may last a day of polls (a few blips over 23 hours must not
        # bury an event whose customer may still pay).
        "transient_failures": 0,
    }
    if action is not None:
        code, message, result = action
        values.update(
            status=EventStatus.ACTION_REQUIRED,
            error_code=code,
            error_message=clip(redact(message)),
            result=result,
        )
    _write_owned(conn, claim, values)


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
        "error_message": clip(redact(message)) if message else None,
        "completed_at": now(),
        "locked_by": None,
        "locked_until": None,
        "next_attempt_at": None,
    }
    if status != EventStatus.DEAD:
        values["sealed_token"] = None  # a dead event may be replayed and need its token again
    return values
