"""Fixtures on real parts: a throwaway Postgres database, Redis as the broker, the Stripe
fake over HTTP, and payworker workers as subprocesses. A missing service skips locally
and fails under CI (CI=true)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import Engine, create_engine, text

from db.migrate import migrate
from tests.stripe_fake import FakeStripe

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
TERMINAL = ("succeeded", "failed", "dead")


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def require(service: str, host: str, port: int) -> None:
    """Skip when a service is down, except under CI where that is a failure."""
    if _reachable(host, port):
        return
    message = f"{service} is not reachable at {host}:{port}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message + " (CI=true: services are required)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh database with the schema at head, dropped afterwards."""
    require("PostgreSQL", "127.0.0.1", 5432)
    name = f"payworker_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    url = f"{PG_ADMIN_URL}/{name}"
    migrate(url)
    yield url
    admin = create_engine(f"{PG_ADMIN_URL}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    eng = create_engine(database_url)
    yield eng
    eng.dispose()


@pytest.fixture(scope="session")
def stripe_fake() -> Iterator[FakeStripe]:
    fake = FakeStripe.start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def broker_url() -> str:
    require("Redis", "127.0.0.1", 6379)
    return REDIS_URL


def worker_env(
    database_url: str, broker_url: str, stripe_url: str, queue: str, **overrides: str
) -> dict[str, str]:
    """The environment of a test worker: fast backoff, short timeouts."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": broker_url,
        "STRIPE_API_KEY": "sk_test_payworker_tests",
        "STRIPE_API_BASE": stripe_url,
        "PAYWORKER_QUEUE": queue,
        "PAYWORKER_RETRY_BACKOFF_BASE": "0.2",
        "PAYWORKER_RETRY_BACKOFF_MAX": "1.5",
        "PAYWORKER_STRIPE_TIMEOUT": "2",
        "PAYWORKER_STRIPE_NETWORK_RETRIES": "0",
        "PAYWORKER_PREREQUISITE_WAIT_SECONDS": "60",
        "PAYWORKER_MAX_ATTEMPTS": "6",
        "PAYWORKER_LEASE_SECONDS": "20",
        "PAYWORKER_SWEEP_SECONDS": "0.5",
        "PAYWORKER_VISIBILITY_TIMEOUT": "120",
        "PYTHONPATH": str(ROOT),
    }
    env.update(overrides)
    return env


class WorkerProcess:
    """A `celery -A worker worker` subprocess with its log captured to a file."""

    def __init__(self, env: dict[str, str], log_path: Path, concurrency: int = 4) -> None:
        self.env = env
        self.log_path = log_path
        self.queue = env["PAYWORKER_QUEUE"]
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker", "worker", "-Q", self.queue,
             "--concurrency", str(concurrency), "--loglevel", "INFO", "-E", "--beat",
             "--hostname", f"test-{uuid.uuid4().hex[:8]}@%h", "--without-mingle",
             "--without-gossip"],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log()}")
            if "ready." in self.log():
                return
            time.sleep(0.1)
        raise RuntimeError(f"worker not ready in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@pytest.fixture(scope="session")
def start_worker(
    database_url: str, broker_url: str, stripe_fake: FakeStripe, tmp_path_factory: Any
) -> Iterator[Callable[..., WorkerProcess]]:
    """Factory: start a worker with env overrides on its own queue; all stopped at the end."""
    started: list[WorkerProcess] = []

    def start(concurrency: int = 4, queue: str | None = None, **overrides: str) -> WorkerProcess:
        queue = queue or f"payments_test_{uuid.uuid4().hex[:8]}"
        env = worker_env(database_url, broker_url, stripe_fake.url, queue, **overrides)
        log_path = tmp_path_factory.mktemp("worker") / "worker.log"
        worker = WorkerProcess(env, log_path, concurrency)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture(scope="session")
def worker(start_worker: Callable[..., WorkerProcess]) -> WorkerProcess:
    """The shared worker most tests publish to."""
    return start_worker()


@pytest.fixture(scope="session")
def upstream(broker_url: str) -> Iterator[Celery]:
    """A bare Celery app, as an upstream web app has it: none of payworker's code."""
    app = Celery("upstream", broker=broker_url)
    app.conf.task_serializer = "json"
    yield app
    app.close()


@pytest.fixture
def publish(upstream: Celery, worker: WorkerProcess) -> Callable[..., str]:
    """Publish one message the way the contract says upstream apps do."""

    def send(message_type: str, queue: str | None = None, **kwargs: Any) -> str:
        result = upstream.send_task(
            f"payments.{message_type}", kwargs=kwargs, queue=queue or worker.queue
        )
        return str(result.id)

    return send


@pytest.fixture
def ids() -> Callable[[str], str]:
    """Unique ids per test, so tests share one database and one fake without clashing."""
    suffix = uuid.uuid4().hex[:10]
    return lambda name: f"{name}-{suffix}"


def event_rows(engine: Engine, event_ids: list[str]) -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT * FROM payment_events WHERE event_id = ANY(:ids)"), {"ids": event_ids}
        ).mappings()
        return {row["event_id"]: dict(row) for row in rows}


@pytest.fixture
def wait_for(engine: Engine) -> Callable[..., dict[str, dict[str, Any]]]:
    """Wait until every named event is final; returns their ledger rows."""

    def wait(*event_ids: str, timeout: float = 60) -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        rows: dict[str, dict[str, Any]] = {}
        while time.monotonic() < deadline:
            rows = event_rows(engine, list(event_ids))
            if len(rows) == len(event_ids) and all(
                r["status"] in TERMINAL for r in rows.values()
            ):
                return rows
            time.sleep(0.1)
        states = {e: rows.get(e, {}).get("status") for e in event_ids}
        raise AssertionError(f"events not final within {timeout}s: {states}")

    return wait
