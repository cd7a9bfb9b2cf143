"""The sweeper: finds events that are due for a retry, or whose worker died, and
re-drives them by publishing the event's own payment task, marked as a re-drive, with
nothing but the event's id (and its user, for the logs and Flower).

Re-driving is always safe: a second delivery of the same event finds it claimed or
finished, and a workflow resumes from its recovery point with the same idempotency keys."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Connection

from db import sweeps
from db.ledger import now


@dataclass(frozen=True)
class Redrive:
    """The message that re-drives one event: its own task, naming the event only."""

    event_id: str
    type: str
    user_id: str | None

    @property
    def task_name(self) -> str:
        return f"payments.{self.type}"

    @property
    def kwargs(self) -> dict[str, str]:
        kwargs = {"event_id": self.event_id}
        if self.user_id is not None:
            kwargs["user_id"] = self.user_id
        return kwargs


Publisher = Callable[[Redrive], None]


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
        publish(Redrive(due.event_id, due.type, due.user_id))
        report.reasons[due.reason] += 1
        report.redriven.append(due.event_id)
    return report
