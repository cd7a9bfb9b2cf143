"""The leadership of a queue's periodic duties (worker/leader.py) against real Postgres,
with duties that only count their runs: one leader at a time, a clean hand-over, a step
down when the duties keep failing, and a take-over when the leader's session is killed."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, text

from core.settings import Settings
from db.duties import leader_key
from tests.conftest import duty_row, leader_pid
from worker.leader import MAX_FAILED_RUNS, Leader

SWEEP_SECONDS = 0.2


class CountingDuty:
    """A duty that counts its runs, and fails while `failing` is set."""

    def __init__(self, name: str = "sweep", period: float = SWEEP_SECONDS) -> None:
        self.name, self.period = name, period
        self.runs = 0
        self.failing = False

    def run(self, conn: Connection) -> dict[str, Any]:
        if self.failing:
            raise ConnectionError("broker unreachable")
        self.runs += 1
        return {"runs": self.runs}


@pytest.fixture
def queue() -> str:
    return f"payments_leader_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def start_leader(database_url: str, queue: str) -> Iterator[Callable[..., Leader]]:
    started: list[Leader] = []

    def start(name: str, duty: CountingDuty) -> Leader:
        settings = Settings(
            DATABASE_URL=database_url,
            PAYWORKER_QUEUE=queue,
            PAYWORKER_SWEEP_SECONDS=SWEEP_SECONDS,
            PAYWORKER_LEASE_SECONDS=6,
        )
        leader = Leader(settings, f"{name}@test:{len(started) + 1}", [duty])
        started.append(leader)
        leader.start()
        return leader

    yield start
    for leader in started:
        leader.stop()


def wait_until(predicate: Callable[[], Any], timeout: float = 10, what: str = "it") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.02)
    raise AssertionError(f"{what}: not within {timeout}s")


def test_one_leader_at_a_time_and_a_clean_hand_over(
    start_leader: Callable[..., Leader], engine: Engine, queue: str
) -> None:
    # Given two workers' leaders on one queue
    first_duty, second_duty = CountingDuty(), CountingDuty()
    first = start_leader("first", first_duty)
    wait_until(lambda: first.leading, what="the first leads")
    second = start_leader("second", second_duty)
    # When a few sweep periods pass
    time.sleep(6 * SWEEP_SECONDS)
    # Then only the first runs the duty, and the table says so
    assert first_duty.runs >= 3 and second_duty.runs == 0 and not second.leading
    row = duty_row(engine, queue)
    assert row is not None and row["leader"] == first.identity
    assert row["last_result"]["runs"] >= 3
    # When the first stops (a warm shutdown)
    stopped_at = time.monotonic()
    first.stop()
    # Then the second leads within a sweep period or so (slack for a busy machine), and
    # the table names it
    wait_until(lambda: second.leading and second_duty.runs, what="the second leads")
    assert time.monotonic() - stopped_at < SWEEP_SECONDS + 2
    assert leader_pid(duty_row(engine, queue)) == 2


def test_a_leader_whose_duties_keep_failing_steps_down_for_another(
    start_leader: Callable[..., Leader], engine: Engine, queue: str
) -> None:
    # Given a leader whose duty fails every run (its broker is unreachable), and another
    failing = CountingDuty()
    failing.failing = True
    first = start_leader("cut-off", failing)
    wait_until(lambda: first.leading, what="the first leads")
    healthy = CountingDuty()
    start_leader("healthy", healthy)
    # When its runs keep failing
    # Then after MAX_FAILED_RUNS of them it steps down and the other leads and runs
    wait_until(
        lambda: healthy.runs >= 1,
        timeout=MAX_FAILED_RUNS * SWEEP_SECONDS + 5,
        what="the healthy one runs the duty",
    )
    assert not first.leading
    row = duty_row(engine, queue)
    assert row is not None and row["leader"].startswith("healthy@")
    # and the failure it recorded stays readable for operators
    assert "ConnectionError: broker unreachable" in row["last_error"]
    assert row["last_run_at"] > row["last_error_at"]


def test_a_leader_whose_session_is_killed_loses_the_lead_to_another(
    start_leader: Callable[..., Leader], engine: Engine, queue: str
) -> None:
    # Given a leader, and another worker waiting
    first_duty, second_duty = CountingDuty(), CountingDuty()
    first = start_leader("first", first_duty)
    wait_until(lambda: first.leading and first_duty.runs, what="the first leads")
    second = start_leader("second", second_duty)
    # When Postgres ends the leader's session, the one holding the queue's lock (a restart,
    # an operator, a network cut)
    hi, lo = divmod(leader_key(queue), 1 << 32)
    with engine.begin() as conn:
        killed = conn.execute(
            text(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_locks"
                " WHERE locktype = 'advisory' AND granted AND objsubid = 1"
                " AND classid::int8 = :hi AND objid::int8 = :lo"
            ),
            {"hi": hi, "lo": lo},
        ).scalar()
    assert killed == 1
    # Then the lock is free: one of them leads again within a few sweep periods, alone
    wait_until(lambda: first.leading != second.leading, what="a new leader")
    time.sleep(3 * SWEEP_SECONDS)
    assert first.leading != second.leading
    leader = first if first.leading else second
    row = duty_row(engine, queue)
    assert row is not None and row["leader"] == leader.identity
    assert row["last_run_at"] > row["leader_since"]
