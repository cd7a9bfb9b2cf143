"""Fixtures of the chaos suite: workers with a short lease, started as their own process
group so that a test can SIGKILL a whole worker (main process, pool children and the
embedded beat) or a single pool child, on Redis and on RabbitMQ in one pytest run
whatever TEST_BROKER says (tests that want both brokers use `chaos_broker`)."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from stripe_fake import FakeStripe
from tests.conftest import (
    WorkerProcess,
    broker_url_for,
    drop_queue,
    upstream_app,
    worker_env,
)

# The short lease the issue asks for: an event held by a killed worker is re-driven by
# the sweeper about LEASE + SWEEP seconds after its last checkpoint.
LEASE_SECONDS = 6
SWEEP_SECONDS = 1
VISIBILITY_TIMEOUT = 60
CHAOS_OVERRIDES = {
    "PAYWORKER_LEASE_SECONDS": str(LEASE_SECONDS),
    "PAYWORKER_SWEEP_SECONDS": str(SWEEP_SECONDS),
    "PAYWORKER_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
    # Longer than the delays the tests inject: the call is in flight when it is killed,
    # it does not time out by itself (the worker caps it below the soft time limit).
    "PAYWORKER_STRIPE_TIMEOUT": "10",
}


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgid) of a process, None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[2])


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _alive(pid: int) -> bool:
    stat = _proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


class KillableWorker(WorkerProcess):
    """A test worker that leads its own process group."""

    def __init__(self, env: dict[str, str], log_path: Path, concurrency: int = 2) -> None:
        super().__init__(env, log_path, concurrency, new_session=True)
        self.pgid = self.proc.pid

    def pids(self) -> list[int]:
        """Live processes of this worker: the main process, its pool children, its beat."""
        return [pid for pid in _all_pids()
                if (stat := _proc_stat(pid)) is not None and stat[2] == self.pgid
                and stat[0] not in ("Z", "X")]

    def children(self) -> list[int]:
        """Live direct children of the main process (pool processes and the beat)."""
        return [pid for pid in _all_pids()
                if (stat := _proc_stat(pid)) is not None and stat[1] == self.proc.pid
                and stat[0] not in ("Z", "X")]

    def kill(self, timeout: float = 10) -> list[int]:
        """SIGKILL every process of the worker at once; returns the pids that were killed
        once none of them is alive any more."""
        victims = self.pids()
        with suppress(ProcessLookupError):
            os.killpg(self.pgid, signal.SIGKILL)
        self.proc.wait(timeout=timeout)
        deadline = time.monotonic() + timeout
        while any(_alive(pid) for pid in victims):
            if time.monotonic() > deadline:
                raise AssertionError(f"still alive after SIGKILL: {self.pids()}")
            time.sleep(0.05)
        return victims

    def kill_child(self, pid: int) -> None:
        """SIGKILL one pool process; the main process stays up and forks a new one."""
        assert pid in self.children(), f"{pid} is not a child of worker {self.proc.pid}"
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _alive(pid):
            if time.monotonic() > deadline:
                raise AssertionError(f"pool process {pid} survived SIGKILL")
            time.sleep(0.05)

    def stop(self) -> None:
        super().stop()
        # Nothing of the group may outlive the test (a pool child orphaned by a kill).
        with suppress(ProcessLookupError):
            os.killpg(self.pgid, signal.SIGKILL)


@dataclass(frozen=True)
class Broker:
    name: str
    url: str


@pytest.fixture(params=["redis", "rabbitmq"])
def chaos_broker(request: pytest.FixtureRequest) -> Broker:
    """Both brokers, in every run: each test using this runs once per broker. A broker
    that is down skips locally and fails under CI=true."""
    return Broker(request.param, broker_url_for(request.param))


@pytest.fixture
def chaos_upstream(chaos_broker: Broker) -> Iterator[Celery]:
    """A plain upstream Celery app on the test's broker."""
    app = upstream_app(chaos_broker.url, name="upstream-chaos")
    yield app
    app.close()


@pytest.fixture
def killable_workers(
    database_url: str, chaos_broker: Broker, stripe_fake: FakeStripe, tmp_path: Path
) -> Iterator[Callable[..., KillableWorker]]:
    """Factory: start a killable worker with the chaos settings on the test's broker.
    Every worker is stopped (and its group killed) and every queue deleted at the end."""
    started: list[KillableWorker] = []

    def start(queue: str | None = None, concurrency: int = 2, **overrides: str) -> KillableWorker:
        queue = queue or f"payments_chaos_{uuid.uuid4().hex[:8]}"
        env = worker_env(database_url, chaos_broker.url, stripe_fake.url, queue,
                         **{**CHAOS_OVERRIDES, **overrides})
        log_path = tmp_path / f"worker-{len(started)}.log"
        worker = KillableWorker(env, log_path, concurrency)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()
    for queue in dict.fromkeys(w.queue for w in started):
        drop_queue(chaos_broker.url, queue)


@pytest.fixture
def fault_free_stripe(stripe_fake: FakeStripe) -> Iterator[FakeStripe]:
    """The session's Stripe fake, with no fault rule left behind by this test."""
    stripe_fake.clear_faults()
    yield stripe_fake
    stripe_fake.clear_faults()


def publish_to(app: Celery, queue: str, message_type: str, **kwargs: Any) -> str:
    """Publish one message as an upstream app does; returns the Celery task id."""
    return str(app.send_task(f"payments.{message_type}", kwargs=kwargs, queue=queue).id)
