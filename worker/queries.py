"""Read-only views of the ledger for the CLI and the demo."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, select

from db.models import EventStatus, PaymentEvent
from db.session import transaction

SEALED_MARKER = "<sealed>"  # a placeholder for the ciphertext
UNFINISHED = (EventStatus.RECEIVED, EventStatus.PROCESSING)
# The order statuses are shown in: the way an event moves.
STATUS_ORDER = tuple(EventStatus)

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def event_as_dict(event: PaymentEvent) -> dict[str, Any]:
    """A ledger row as JSON-ready data (the sealed card token only as a marker)."""
    out: dict[str, Any] = {}
    for column in PaymentEvent.__table__.columns:
        value = getattr(event, column.key)
        out[column.key] = value.isoformat() if isinstance(value, datetime) else value
    if out.get("sealed_token") is not None:
        # Ciphertext: nothing an operator can use, so it is not shown.
        out["sealed_token"] = SEALED_MARKER
    return out


def show_event(engine: Engine, event_id: str) -> dict[str, Any] | None:
    with transaction(engine) as session:
        event = session.get(PaymentEvent, event_id)
        return event_as_dict(event) if event is not None else None


def parse_since(text: str, moment: datetime | None = None) -> datetime:
    """`30m`, `2h`, `1d`, `1w` ago, or an ISO 8601 time (UTC when it has no offset).

    Raises:
        ValueError: neither form.
    """
    moment = moment or datetime.now(UTC)
    relative = _RELATIVE.match(text)
    if relative:
        amount, unit = float(relative.group(1)), relative.group(2).lower()
        return moment - timedelta(seconds=amount * _UNIT_SECONDS[unit])
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"--since {text!r}: expected e.g. 30m, 2h, 1d, 1w or an ISO time"
            " like 2024-05-01T12:00:00+00:00"
        ) from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


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

    def age(self, moment: datetime) -> timedelta:
        return moment - self.created_at

    def as_json(self, moment: datetime) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in self.__dict__.items():
            out[name] = value.isoformat() if isinstance(value, datetime) else value
        out["age_seconds"] = round(self.age(moment).total_seconds(), 3)
        return out


def list_events(
    engine: Engine,
    *,
    status: str | None = None,
    type_: str | None = None,
    since: datetime | None = None,
    limit: int = 100,
) -> list[EventLine]:
    """Events, most recently changed first; `since` filters on the last change."""
    stmt = select(PaymentEvent).order_by(PaymentEvent.updated_at.desc(), PaymentEvent.event_id)
    if status is not None:
        stmt = stmt.where(PaymentEvent.status == status)
    if type_ is not None:
        stmt = stmt.where(PaymentEvent.type == type_)
    if since is not None:
        stmt = stmt.where(PaymentEvent.updated_at >= since)
    with transaction(engine) as session:
        return [
            EventLine(
                event_id=e.event_id,
                type=e.type,
                user_id=e.user_id,
                status=e.status,
                error_code=e.error_code,
                error_message=e.error_message,
                last_error=e.last_error,
                attempts=e.attempts,
                transient_failures=e.transient_failures,
                generation=e.generation,
                recovery_point=e.recovery_point,
                created_at=e.created_at,
                updated_at=e.updated_at,
                completed_at=e.completed_at,
            )
            for e in session.scalars(stmt.limit(limit))
        ]


@dataclass
class StatusOverview:
    """What `payworker status` shows."""

    moment: datetime
    # (type, status) -> count
    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    oldest_unfinished: dict[str, Any] | None = None
    # Unfinished and nobody on it: the sweeper publishes these on its next pass.
    retry_due: int = 0
    # Unfinished with a retry (or a prerequisite wait) scheduled later.
    retry_waiting: int = 0
    # Held by a worker right now (live lease).
    running: int = 0
    # Lease ran out: the worker died; the sweeper re-drives these.
    lease_expired: int = 0

    @property
    def types(self) -> list[str]:
        return sorted({t for t, _ in self.counts})

    def by_status(self, status: str) -> int:
        return sum(n for (_, s), n in self.counts.items() if s == status)

    def as_json(self) -> dict[str, Any]:
        matrix: dict[str, dict[str, int]] = {
            t: {s.value: self.counts.get((t, s), 0) for s in STATUS_ORDER} for t in self.types
        }
        return {
            "at": self.moment.isoformat(),
            "counts": matrix,
            "totals": {s.value: self.by_status(s) for s in STATUS_ORDER},
            "dead": self.by_status(EventStatus.DEAD),
            "retry_due": self.retry_due,
            "retry_waiting": self.retry_waiting,
            "running": self.running,
            "lease_expired": self.lease_expired,
            "oldest_unfinished": self.oldest_unfinished,
        }


def status_overview(engine: Engine) -> StatusOverview:
    """Counts by type and status, the schedule of unfinished events, the oldest of them."""
    unfinished = PaymentEvent.status.in_(UNFINISHED)
    with transaction(engine) as session:
        moment: datetime = session.scalar(select(func.now())) or datetime.now(UTC)
        overview = StatusOverview(moment=moment)
        rows = session.execute(
            select(PaymentEvent.type, PaymentEvent.status, func.count()).group_by(
                PaymentEvent.type, PaymentEvent.status
            )
        ).all()
        overview.counts = {(t, s): int(n) for t, s, n in rows}
        unlocked = PaymentEvent.locked_until.is_(None)
        count = func.count().filter
        schedule = session.execute(
            select(
                count(unlocked & (PaymentEvent.next_attempt_at <= moment)),
                count(unlocked & (PaymentEvent.next_attempt_at > moment)),
                count(PaymentEvent.locked_until > moment),
                count(PaymentEvent.locked_until <= moment),
            ).where(unfinished)
        ).one()
        overview.retry_due, overview.retry_waiting, overview.running, overview.lease_expired = (
            int(n) for n in schedule
        )
        oldest = session.scalars(
            select(PaymentEvent).where(unfinished).order_by(PaymentEvent.created_at).limit(1)
        ).one_or_none()
        overview.oldest_unfinished = event_as_dict(oldest) if oldest is not None else None
        return overview
