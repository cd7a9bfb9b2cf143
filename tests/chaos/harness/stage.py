"""One live worker on one queue that a recovery-point test kills while the Stripe fake
holds a request, and a fresh worker that must finish the event: the stage of the recovery
modules (test_recovery_points.py, test_recovery_points_modern.py), with their asserts and
their figures."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine

from stripe_fake import FakeStripe
from tests.chaos.harness.broker import Publisher
from tests.chaos.harness.watch import figures, poll, wait_final
from tests.chaos.harness.workers import KillableWorker, WorkerPool
from tests.conftest import fresh_database

# A held request must outlast the kill and the whole recovery; the fault fires once only.
HOLD = 30.0
RECOVERY_TIMEOUT = 40.0


@dataclass
class Stage:
    """One live worker on one queue, a publisher, the fake, and the figures."""

    engine: Engine
    fake: FakeStripe
    pool: WorkerPool
    publisher: Publisher
    broker_url: str
    live: KillableWorker | None = None
    kills: int = 0
    restarts: int = 0
    results: list[str] = field(default_factory=list)

    def worker(self) -> KillableWorker:
        if self.live is None or not self.live.alive():
            self.live = self.pool.start()
        return self.live.wait_ready()

    def publish(self, message_type: str, **kwargs: Any) -> str:
        self.worker()
        self.publisher.send(message_type, **kwargs)
        return str(kwargs["event_id"])

    def wait_fired(self, fault_id: str, timeout: float = 20) -> None:
        def fired() -> bool:
            return any(f["id"] == fault_id and f["fired"] > 0 for f in self.fake.faults())

        poll(fired, timeout, f"fault {fault_id} to fire")

    def replace_live(self, **overrides: str) -> KillableWorker:
        """Stop the live worker (warm) and start one with other settings in its place."""
        if self.live is not None:
            self.live.stop()
        self.live = self.pool.start(**overrides)
        return self.live

    def kill(self) -> float:
        """SIGKILL the live worker's whole process group and start its successor at once
        (its start-up overlaps the lease that must run out)."""
        assert self.live is not None
        self.live.kill()
        killed_at = time.monotonic()
        self.kills += 1
        self.fake.clear_faults()  # the held request is answered to nobody; no new faults
        self.live = self.pool.start(wait=False)
        self.restarts += 1
        return killed_at

    def recover(self, event_id: str, killed_at: float) -> tuple[dict[str, Any], float]:
        rows = wait_final(self.engine, [event_id], RECOVERY_TIMEOUT)
        row = rows.get(event_id)
        took = time.monotonic() - killed_at
        return row or {}, took


def assert_held_by_dead_worker(row: dict[str, Any] | None, point: str) -> None:
    """The ledger as the kill left it: the point committed and the killed run's lease still
    there, so that run recorded nothing after its Stripe request (a retry or an outcome
    would have released the lease)."""
    assert row is not None
    assert row["status"] == "processing", row
    assert row["recovery_point"] == point, row
    assert row["locked_by"] is not None, row


def assert_resumed(row: dict[str, Any], point: str) -> None:
    """The event finished on a second run that started at the recovery point, re-driven
    by the sweeper after the lease expired."""
    assert row.get("status") == "succeeded", row
    assert row["attempts"] >= 2 and row["redrives"] >= 1, row


def report(stage: Stage, scenario: str, row: dict[str, Any], took: float,
           duplicates: int) -> None:
    lost = 0 if row.get("status") in ("succeeded", "failed", "dead") else 1
    stage.results.append(figures(
        f"recovery {scenario}", events=1, kills=1, restarts=1, duplicates_found=duplicates,
        lost_events_found=lost, attempts=row.get("attempts"), redrives=row.get("redrives"),
        recovered_in=f"{took:.1f}s",
    ))


@contextmanager
def staged(broker_url: str, log_dir: Path, db_prefix: str, **overrides: str) -> Iterator[Stage]:
    """A fresh fake and database, and a pool of workers with the module's settings."""
    fake = FakeStripe.start()
    with fresh_database(db_prefix) as url:
        engine = create_engine(url)
        # The kill comes within ~0.1 s of the held request reaching the fake, well inside the
        # 2 s Stripe timeout. A longer timeout would not fit the per-run deadline (a 5 s soft
        # limit with a 6 s lease) once a loaded machine delays the run's first request.
        pool = WorkerPool(url, broker_url, fake.url, log_dir,
                          **{"PAYWORKER_STRIPE_TIMEOUT": "2", **overrides})
        publisher = Publisher(broker_url, pool.queue)
        stage = Stage(engine, fake, pool, publisher, broker_url)
        started = time.monotonic()
        try:
            yield stage
        finally:
            figures("recovery total", tests=len(stage.results), kills=stage.kills,
                    restarts=stage.restarts, seconds=f"{time.monotonic() - started:.1f}")
            pool.stop_all()
            publisher.close()
            engine.dispose()
            fake.stop()
