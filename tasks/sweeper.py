"""The sweeper: finds events that are due for a retry, or whose worker died, and
re-drives them by publishing a `payworker.redrive` message that names the event.

Re-driving is always safe: a second delivery of the same event finds it claimed or
finished, and a workflow resumes from its recovery point with the same idempotency keys."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Connection

from db import sweeps
from db.ledger import now

Publisher = Callable[[str], None]


@dataclass
class SweepReport:
    """What one pass found and did."""

    redriven: list[str] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)


def sweep(
    conn: Connection, publish: Publisher, *, queue: str, grace_seconds: float, limit: int = 1000
) -> SweepReport:
    """One pass in the caller's transaction: every due event of `queue` is published again
    while its row is still locked (a worker that receives it waits for the commit)."""
    report = SweepReport()
    for due in sweeps.take_due(conn, queue, now(), grace_seconds, limit):
        publish(due.event_id)
        report.reasons[due.reason] += 1
        report.redriven.append(due.event_id)
    return report
