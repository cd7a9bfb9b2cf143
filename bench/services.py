"""What a benchmark run starts and stops: its database (seeded), the Stripe stub, worker
processes, and meters of the workers' memory and of everyone's CPU."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, text

from bench.app import BARE_TABLE
from db.migrate import migrate

ROOT = Path(__file__).resolve().parent.parent
# The publisher's own Postgres connections, told apart from the workers' by this name.
PUBLISHER_APP_NAME = "payworker-bench-publisher"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---- database ----------------------------------------------------------------------------


def fresh_database(admin_url: str, name: str) -> str:
    """Drop and re-create the bench database at schema head; returns its URL."""
    drop_database(admin_url, name)
    url = f"{admin_url}/{name}"
    migrate(url)
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(BARE_TABLE))
    engine.dispose()
    return url


def drop_database(admin_url: str, name: str) -> None:
    admin = create_engine(f"{admin_url}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def seed_users(url: str, users: int) -> list[str]:
    """Customers with one default card each, written straight into Postgres: the measured
    path is charge_requested only (registration and card attach are not benchmarked)."""
    engine = create_engine(url)
    ids = [f"bench-user-{i}" for i in range(users)]
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO customers (user_id, stripe_customer_id, email) VALUES (:u, :c, :e)"),
            [{"u": u, "c": f"cus_bench{i}", "e": f"{u}@example.com"} for i, u in enumerate(ids)],
        )
        conn.execute(
            text(
                "INSERT INTO cards (stripe_card_id, user_id, fingerprint, brand, last4,"
                " exp_month, exp_year, is_default)"
                " VALUES (:c, :u, :f, 'Visa', '4242', 12, 2040, true)"
            ),
            [{"c": f"card_bench{i}", "u": u, "f": f"fp{i}"} for i, u in enumerate(ids)],
        )
    engine.dispose()
    return ids


# ---- the Stripe stub ---------------------------------------------------------------------


class StubProcess:
    def __init__(self, latency: float, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = (log_dir / "stub.log").open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "bench.stub", "--port", str(self.port),
                "--latency", str(latency),
            ],
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                self.stats()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("the Stripe stub did not start")

    def _call(self, method: str, path: str) -> Any:
        request = urllib.request.Request(self.url + path, method=method)  # noqa: S310
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (loopback)
            return json.loads(response.read())

    def stats(self, since: float = 0, until: float | None = None) -> dict[str, Any]:
        query = f"?since={since}" + (f"&until={until}" if until is not None else "")
        result: dict[str, Any] = self._call("GET", "/_stub/stats" + query)
        return result

    def arrivals(self, since: float, until: float) -> list[float]:
        times: list[float] = self._call("GET", f"/_stub/arrivals?since={since}&until={until}")
        return times

    def set_latency(self, seconds: float) -> None:
        self._call("POST", f"/_stub/latency?seconds={seconds}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


# ---- workers -----------------------------------------------------------------------------


class Worker:
    """`celery -A bench.app worker` in a process group of its own (its sweep runs in it)."""

    def __init__(self, env: dict[str, str], name: str, log_dir: Path) -> None:
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("ab")
        gevent = env.get("PAYWORKER_POOL") == "gevent"
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", "bench.app", "worker",
                "-Q", env["PAYWORKER_QUEUE"], "--loglevel", "INFO", "--hostname", f"{name}@%h",
                # gevent must be named on the command line (Celery monkey-patches only then).
                *(["-P", "gevent"] if gevent else []),
            ],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early; see {self.log_path}")
            if "ready." in self.log_path.read_text(errors="replace"):
                return
            time.sleep(0.2)
        raise RuntimeError(f"worker not ready in {timeout}s; see {self.log_path}")

    def pids(self) -> list[int]:
        """The worker's main process and all its descendants (pool children)."""
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
        found, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(children.get(pid, []))
        return found

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # a stray child
        self.proc.wait()
        self._log.close()


# ---- meters ------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) one process has used so far; 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_server_pid(port: int) -> int | None:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.startswith(b"redis-server") and f":{port}".encode() in cmdline:
            return int(entry)
    return None


@dataclass
class CpuMeter:
    """CPU used during a run by each part: the workers, the Postgres backends serving the
    bench database (not the publisher's), the stub, and the whole Redis server (shared with
    anything else that uses it, so an upper bound)."""

    workers: list[Worker]
    stub: StubProcess
    engine: Engine
    redis_port: int
    _start: dict[str, dict[int, float]] = field(default_factory=dict)

    def _pids(self) -> dict[str, list[int]]:
        with self.engine.connect() as conn:
            backends = conn.execute(
                text(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                    " AND pid <> pg_backend_pid() AND application_name <> :me"
                ),
                {"me": PUBLISHER_APP_NAME},
            ).scalars()
            postgres = [int(pid) for pid in backends]
        redis_pid = redis_server_pid(self.redis_port)
        return {
            "worker": [pid for worker in self.workers for pid in worker.pids()],
            "postgres": postgres,
            "stub": [self.stub.proc.pid],
            "redis_server": [redis_pid] if redis_pid else [],
        }

    def _sample(self) -> dict[str, dict[int, float]]:
        return {
            part: {pid: cpu_seconds(pid) for pid in pids} for part, pids in self._pids().items()
        }

    def start(self) -> None:
        self._start = self._sample()

    def used(self) -> dict[str, float]:
        """CPU seconds per part since start()."""
        end = self._sample()
        return {
            part: sum(t - self._start.get(part, {}).get(pid, 0.0) for pid, t in times.items())
            for part, times in end.items()
        }


def _memory_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in kB; PSS splits pages shared after a fork fairly."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


@dataclass
class MemorySampler:
    """Samples the summed RSS and PSS of the workers' process trees twice a second, and
    the workers' open database connections."""

    workers: list[Worker]
    engine: Engine | None = None
    peak_rss_kb: int = 0
    peak_pss_kb: int = 0
    processes: int = 0
    peak_db_connections: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> MemorySampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            pids = [pid for worker in self.workers for pid in worker.pids()]
            sizes = [_memory_kb(pid) for pid in pids]
            rss, pss = sum(r for r, _ in sizes), sum(p for _, p in sizes)
            if rss > self.peak_rss_kb:
                self.peak_rss_kb, self.processes = rss, len(pids)
            self.peak_pss_kb = max(self.peak_pss_kb, pss)
            if self.engine is not None:
                self.peak_db_connections = max(self.peak_db_connections, self._connections())

    def _connections(self) -> int:
        """The workers' open connections to the bench database (not the publisher's)."""
        assert self.engine is not None
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND application_name <> :me"
                    ),
                    {"me": PUBLISHER_APP_NAME},
                ).scalar_one()
            )
