"""Workers a chaos scenario can SIGKILL whole or in part, with the short lease of the issue,
and a pool of them on one queue."""

from __future__ import annotations

import os
import signal
import time
import uuid
from contextlib import suppress
from pathlib import Path

from tests.conftest import WorkerProcess, drop_queue, worker_env

# The short lease the issue asks for: an event held by a killed worker is re-driven by the
# sweeper about LEASE + SWEEP seconds after its last checkpoint.
LEASE_SECONDS = 6
SWEEP_SECONDS = 1
VISIBILITY_TIMEOUT = 60
CHAOS_SETTINGS = {
    "PAYWORKER_LEASE_SECONDS": str(LEASE_SECONDS),
    "PAYWORKER_SWEEP_SECONDS": str(SWEEP_SECONDS),
    "PAYWORKER_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
    # Batches are published out of order: a charge may wait this long for its user's card.
    "PAYWORKER_PREREQUISITE_WAIT_SECONDS": "120",
    # Chaos 5 fails 30% of Stripe requests: events must not run out of attempts.
    "PAYWORKER_MAX_ATTEMPTS": "30",
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
    """A worker that leads its own process group, so that one SIGKILL takes its main
    process (with its leader thread) and its pool children together. It sends no events or
    heartbeats: what a frozen broker connection holds is its acks and publishes."""

    READY_TIMEOUT = 40.0  # two workers starting at once on a busy machine

    def __init__(
        self, env: dict[str, str], log_path: Path, concurrency: int = 4, *, wait: bool = True
    ) -> None:
        super().__init__(env, log_path, concurrency, new_session=True, events=False, wait=wait)
        self.pgid = self.proc.pid  # a new session leader: its pid is the group id
        self.killed = False  # by the test
        self.replaced = False  # by WorkerPool.supervise

    def pids(self) -> list[int]:
        """Live processes of this worker: the main process and its pool children."""
        return [pid for pid in _all_pids()
                if (stat := _proc_stat(pid)) is not None and stat[2] == self.pgid
                and stat[0] not in ("Z", "X")]

    def children(self) -> list[int]:
        """Live direct children of the main process (pool processes)."""
        return [pid for pid in _all_pids()
                if (stat := _proc_stat(pid)) is not None and stat[1] == self.proc.pid
                and stat[0] not in ("Z", "X")]

    def kill(self, timeout: float = 10) -> list[int]:
        """SIGKILL every process of the worker at once (no warm shutdown, no ack, no
        cleanup); returns the pids that were killed once none of them is alive any more."""
        self.killed = True
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
        """Warm shutdown; then nothing of the group may outlive the test (a pool child
        orphaned by a kill)."""
        super().stop()
        with suppress(ProcessLookupError):
            os.killpg(self.pgid, signal.SIGKILL)


class WorkerPool:
    """Killable workers on one queue with the chaos settings (and the pool's overrides);
    `stop_all` stops every one of them and deletes the queue."""

    def __init__(
        self, database_url: str, broker_url: str, stripe_url: str, log_dir: Path,
        queue: str | None = None, **overrides: str,
    ) -> None:
        self.database_url = database_url
        self.broker_url = broker_url
        self.stripe_url = stripe_url
        self.log_dir = log_dir
        self.queue = queue or f"payments_chaos_{uuid.uuid4().hex[:8]}"
        self.overrides = overrides
        self.started: list[KillableWorker] = []
        self.supervisor_restarts = 0

    def start(self, concurrency: int = 4, wait: bool = True, **overrides: str) -> KillableWorker:
        """Start a worker on the pool's queue; with wait=False, return before it is ready
        (`wait_ready()` later), so that several start side by side."""
        env = worker_env(self.database_url, self.broker_url, self.stripe_url, self.queue,
                         **{**CHAOS_SETTINGS, **self.overrides, **overrides})
        log_path = self.log_dir / f"worker-{len(self.started)}-{uuid.uuid4().hex[:6]}.log"
        worker = KillableWorker(env, log_path, concurrency, wait=False)
        self.started.append(worker)  # stopped by stop_all even if it never gets ready
        return worker.wait_ready() if wait else worker

    def supervise(self) -> int:
        """What a process supervisor (docker compose's `restart: unless-stopped`) does:
        start a replacement for every worker that exited by itself. Returns how many."""
        started = 0
        for worker in list(self.started):
            if not worker.alive() and not worker.replaced and not worker.killed:
                worker.replaced = True
                self.start(wait=False, concurrency=worker.concurrency)
                started += 1
        self.supervisor_restarts += started
        return started

    def stop_all(self) -> None:
        for worker in self.started:
            worker.stop()
        drop_queue(self.broker_url, self.queue)  # a broker gone by now only earns a warning

    def logs(self) -> str:
        return "\n".join(w.log() for w in self.started)
