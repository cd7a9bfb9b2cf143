"""Statements of an operator's replay: read an event locked, and reopen it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Select, select, update

from db.ledger_sql import EVENTS
from db.models import EventStatus


@dataclass(frozen=True)
class EventRow:
    """An event as a replay sees it."""

    event_id: str
    type: str
    user_id: str | None
    payload: dict[str, Any]
    status: str
    error_code: str | None
    error_message: str | None
    last_error: str | None
    result: dict[str, Any] | None
    recovery_point: str
    progress: dict[str, Any]
    attempts: int
    generation: int
    queue: str | None
    sealed_token: str | None
    completed_at: datetime | None


_e = EVENTS.c
_ROW = select(
    _e.event_id, _e.type, _e.user_id, _e.payload, _e.status, _e.error_code, _e.error_message,
    _e.last_error, _e.result, _e.recovery_point, _e.progress, _e.attempts, _e.generation,
    _e.queue, _e.sealed_token, _e.completed_at,
)  # fmt: skip


def locked_event(conn: Connection, event_id: str) -> EventRow | None:
    """The event, locked until the transaction ends; None if unknown."""
    return _event(conn, _ROW.where(_e.event_id == event_id).with_for_update())


def event(conn: Connection, event_id: str) -> EventRow | None:
    """The event as it is now, not locked (a look before a transaction); None if unknown."""
    return _event(conn, _ROW.where(_e.event_id == event_id))


def _event(conn: Connection, query: Select[Any]) -> EventRow | None:
    row = conn.execute(query).first()
    if row is None:
        return None
    return EventRow(**{**row._mapping, "progress": dict(row.progress or {})})


def reopen(
    conn: Connection,
    event_id: str,
    *,
    recovery_point: str,
    progress: dict[str, Any],
    generation: int,
    queue: str,
    next_attempt_at: datetime,
    forget_token: bool,
) -> None:
    """Back to `processing` with a fresh retry budget, at `recovery_point`."""
    values: dict[str, Any] = {
        "status": EventStatus.PROCESSING,
        "error_code": None,
        "error_message": None,
        "result": None,
        "completed_at": None,
        "transient_failures": 0,
        "locked_by": None,
        "locked_until": None,
        "recovery_point": recovery_point,
        "progress": progress,
        "generation": generation,
        "queue": queue,
        "next_attempt_at": next_attempt_at,
    }
    if forget_token:
        values["sealed_token"] = None
    conn.execute(update(EVENTS).where(EVENTS.c.event_id == event_id).values(values))
