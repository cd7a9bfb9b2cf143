"""The sweeper: finds events that are due for a retry, or whose worker died, and
re-drives them by publishing a `payworker.redrive` message that names the event.

Re-driving is always safe: a second delivery of the same event finds it claimed or
finished, and a workflow resumes from its recovery point with the same idempotency keys."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from db.models import EventStatus, PaymentEvent
from tasks import ledger

Publisher = Callable[[str], None]

LEASE_EXPIRED = "lease_expired"  # the worker died or was killed mid-event
RETRY_DUE = "retry_due"  # a scheduled retry (or a wait for a prerequisite) has come
UNCLAIMED = "unclaimed"  # recorded but never picked up: its message was lost


@dataclass
class SweepReport:
    """What one pass found and did."""

    redriven: list[str] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)


def due(
    session: Session, queue: str, moment: datetime, grace_seconds: float, limit: int
) -> list[PaymentEvent]:
    """Unfinished events of `queue` that nobody is working on and that are due. Rows are
    locked, and skipped by a concurrent sweeper."""
    stale = moment - timedelta(seconds=grace_seconds)
    unlocked = PaymentEvent.locked_until.is_(None)
    stmt = (
        select(PaymentEvent)
        .where(
            PaymentEvent.queue == queue,
            PaymentEvent.status.in_([EventStatus.RECEIVED, EventStatus.PROCESSING]),
            or_(
                PaymentEvent.locked_until < moment,
                and_(unlocked, PaymentEvent.next_attempt_at <= moment),
                and_(
                    unlocked,
                    PaymentEvent.next_attempt_at.is_(None),
                    PaymentEvent.updated_at < stale,
                ),
            ),
        )
        .order_by(PaymentEvent.next_attempt_at.nulls_first(), PaymentEvent.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list(session.scalars(stmt))


def sweep(
    session: Session, publish: Publisher, *, queue: str, grace_seconds: float, limit: int = 1000
) -> SweepReport:
    """One pass in the caller's transaction. Each due event is published again and its
    next check set `grace_seconds` ahead, so that a lost publish is repeated but a
    message still on its way is not doubled at every pass."""
    report = SweepReport()
    moment = ledger.now()
    for event in due(session, queue, moment, grace_seconds, limit):
        if event.locked_until is not None:
            reason = LEASE_EXPIRED
            event.locked_by = None
            event.locked_until = None
        elif event.next_attempt_at is not None:
            reason = RETRY_DUE
        else:
            reason = UNCLAIMED
        publish(event.event_id)
        event.next_attempt_at = moment + timedelta(seconds=grace_seconds)
        event.redrives += 1
        report.reasons[reason] += 1
        report.redriven.append(event.event_id)
    return report
