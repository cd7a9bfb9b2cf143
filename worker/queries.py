"""Read-only views of the ledger for the CLI and the demo."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, select

from db.models import PaymentEvent
from db.session import transaction


def event_as_dict(event: PaymentEvent) -> dict[str, Any]:
    """A ledger row as JSON-ready data."""
    out: dict[str, Any] = {}
    for column in PaymentEvent.__table__.columns:
        value = getattr(event, column.key)
        out[column.key] = value.isoformat() if isinstance(value, datetime) else value
    return out


def show_event(engine: Engine, event_id: str) -> dict[str, Any] | None:
    with transaction(engine) as session:
        event = session.get(PaymentEvent, event_id)
        return event_as_dict(event) if event is not None else None


def status_counts(engine: Engine) -> tuple[list[tuple[str, str, int]], dict[str, Any] | None]:
    """Counts by (type, status) and the oldest unfinished event."""
    with transaction(engine) as session:
        rows = session.execute(
            select(PaymentEvent.type, PaymentEvent.status, func.count())
            .group_by(PaymentEvent.type, PaymentEvent.status)
            .order_by(PaymentEvent.type, PaymentEvent.status)
        ).all()
        oldest = session.scalars(
            select(PaymentEvent)
            .where(PaymentEvent.status.in_(["received", "processing"]))
            .order_by(PaymentEvent.created_at)
            .limit(1)
        ).one_or_none()
        return [(t, s, int(n)) for t, s, n in rows], (
            event_as_dict(oldest) if oldest is not None else None
        )
