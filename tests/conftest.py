"""Fixtures on real parts: a throwaway Postgres database, a real broker, the Stripe fake
over HTTP, and payworker workers as subprocesses. A missing service skips locally and
fails under CI (CI=true).

The broker is Redis unless `TEST_BROKER=rabbitmq` (RabbitMQ at `TEST_RABBITMQ_URL`, quorum
queues declared the way celeryconfig declares them). Every test queue is deleted at the
end of the session, so neither broker accumulates queues run after run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

import pytest
from celery import Celery
from kombu import Connection, Exchange, Queue
from sqlalchemy import Engine, create_engine, text

from db.migrate import migrate
from stripe_fake import FakeStripe

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
RABBITMQ_URL = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")
BROKER_URLS = {"redis": REDIS_URL, "rabbitmq": RABBITMQ_URL}
TEST_BROKER = os.environ.get("TEST_BROKER", "redis").strip().lower() or "redis"
if TEST_BROKER not in BROKER_URLS:
    raise pytest.UsageError(f"TEST_BROKER={TEST_BROKER!r}: expected one of {sorted(BROKER_URLS)}")
TERMINAL = ("succeeded", "failed", "dead")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "any_broker: the outcome does not depend on TEST_BROKER (no broker, or the test"
        " picks its brokers itself, e.g. with the chaos_broker fixture); set on collection."
        " `make test` runs these in its Redis pass only.",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "chaos_broker" in fixtures or "broker_url" not in fixtures:
            item.add_marker(pytest.mark.any_broker)


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


@contextmanager
def fresh_database(prefix: str) -> Iterator[str]:
    """A database of its own, its name starting with `prefix`, with the schema at head;
    dropped afterwards."""
    require("PostgreSQL", "127.0.0.1", 5432)
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    url = f"{PG_ADMIN_URL}/{name}"
    try:
        migrate(url)
        yield url
    finally:
        admin = create_engine(f"{PG_ADMIN_URL}/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """The session's database (the chaos tests that count or kill connections make their
    own with `fresh_database`)."""
    with fresh_database("payworker_test") as url:
        yield url


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


def is_rabbitmq(broker_url: str) -> bool:
    return broker_url.startswith(("amqp://", "amqps://", "pyamqp://"))


def broker_url_for(broker: str) -> str:
    """The URL of `broker` ("redis" or "rabbitmq") once its service answers."""
    url = BROKER_URLS[broker]
    parts = urlsplit(url)
    default_port = 5672 if is_rabbitmq(url) else 6379
    require({"redis": "Redis", "rabbitmq": "RabbitMQ"}[broker], parts.hostname or "127.0.0.1",
            parts.port or default_port)
    return url


def payments_queue(broker_url: str, name: str) -> Queue:
    """A payments queue as the worker declares it: behind a direct exchange of the same
    name, and on RabbitMQ a durable quorum queue (any other declaration gets
    PRECONDITION_FAILED). On Redis the exchange matters too: deleting the queue removes
    only the binding declared here, and a binding left behind lets the messages a killed
    worker held (restored after the visibility timeout) refill the deleted queue."""
    if is_rabbitmq(broker_url):
        return Queue(name, Exchange(name, type="direct"), routing_key=name,
                     queue_arguments={"x-queue-type": "quorum"}, durable=True)
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


def upstream_app(broker_url: str, name: str = "upstream") -> Celery:
    """A bare Celery app, as an upstream web app has it: none of payworker's code. On
    RabbitMQ a queue it publishes to is declared as a quorum queue (as celeryconfig
    declares it) and publishes wait for the broker's confirm."""
    app = Celery(name, broker=broker_url)
    app.conf.task_serializer = "json"
    if is_rabbitmq(broker_url):
        app.conf.task_create_missing_queue_type = "quorum"
        app.conf.broker_transport_options = {"confirm_publish": True}
    return app


def drop_queue(broker_url: str, name: str) -> None:
    """Delete a test queue (and on RabbitMQ its exchange); a missing one is fine. Best
    effort: a broker that is down by now (a chaos test stopped it) only earns a warning."""
    queue = payments_queue(broker_url, name)
    try:
        with Connection(broker_url, connect_timeout=5) as conn:
            channel = conn.default_channel
            bound = queue(channel)
            bound.declare()  # kombu's Redis transport deletes only bindings it declared
            if is_rabbitmq(broker_url):
                bound.delete()
                with suppress(Exception):
                    bound.exchange.delete()
            else:
                _forget_unacked(channel, name)
                bound.delete()
                # payworker's transport keeps a claimed list per queue (usually empty)
                channel.client.delete(f"payworker.claimed:{name}",
                                      f"payworker.claimed_seen:{name}")
    except Exception as exc:
        warnings.warn(f"test queue {name!r} not deleted: {exc!r}", stacklevel=2)


def _forget_unacked(channel: Any, queue: str) -> None:
    """Redis: drop the unacked messages of a queue (those a killed worker held). kombu
    would restore them into the queue's list after the visibility timeout, recreating a
    queue nobody consumes any more."""
    client = channel.client
    for tag, raw in client.hscan_iter(channel.unacked_key):
        with suppress(ValueError, TypeError):
            _message, _exchange, routing_key = json.loads(raw)
            if routing_key == queue:
                client.hdel(channel.unacked_key, tag)
                client.zrem(channel.unacked_index_key, tag)


@pytest.fixture(scope="session")
def broker_url() -> str:
    """The broker of this run: `TEST_BROKER` (redis by default, or rabbitmq)."""
    return broker_url_for(TEST_BROKER)


@pytest.fixture(scope="session")
def broker_name(broker_url: str) -> str:
    return "rabbitmq" if is_rabbitmq(broker_url) else "redis"


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
        # Readable key=value lines: tests look for "event_id=…" in the worker log.
        "PAYWORKER_LOG_FORMAT": "console",
        # The suite's workers share one test key: the Stripe fake has no rate limit, and the
        # limiter's own tests set theirs.
        "PAYWORKER_STRIPE_RATE": "1000",
        "PAYWORKER_VISIBILITY_TIMEOUT": "120",
        "PYTHONPATH": str(ROOT),
    }
    env.update(overrides)
    return env


class WorkerProcess:
    """A worker subprocess with its log captured to a file: `celery -A worker worker -Q …`,
    or `payworker worker` (command="payworker"). Neither is given `--beat`: every worker
    takes part in the periodic duties by itself."""

    READY_TIMEOUT = 30.0

    def __init__(
        self, env: dict[str, str], log_path: Path, concurrency: int = 4,
        *, new_session: bool = False, events: bool = True, wait: bool = True,
        command: str = "celery",
    ) -> None:
        self.env = env
        self.log_path = log_path
        self.queue = env["PAYWORKER_QUEUE"]
        self.concurrency = concurrency
        self._log = log_path.open("ab")
        # events=False: no task events and no heartbeats, so that the worker's only broker
        # traffic is its consuming, its acks and its own publishes.
        monitoring = ["-E"] if events else ["--without-heartbeat"]
        common = ["--concurrency", str(concurrency), "--hostname",
                  f"test-{uuid.uuid4().hex[:8]}@%h", "--without-mingle", "--without-gossip"]
        if command == "payworker":  # it adds -Q PAYWORKER_QUEUE, --loglevel INFO and -E
            argv = [sys.executable, "-m", "worker.cli", "worker", *common]
        else:
            argv = [sys.executable, "-m", "celery", "-A", "worker", "worker", "-Q", self.queue,
                    "--loglevel", "INFO", *monitoring, *common]
        # new_session: the worker leads its own process group, so that a test can kill it
        # whole (main process and pool children) in one signal.
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=new_session,
        )
        if wait:
            self.wait_ready()

    def wait_ready(self) -> Self:
        """Return once the worker logged "ready."; raise with its log if it exited or took
        longer than READY_TIMEOUT."""
        deadline = time.monotonic() + self.READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log()[-4000:]}")
            if "ready." in self.log():
                return self
            time.sleep(0.05)
        raise RuntimeError(f"worker not ready in {self.READY_TIMEOUT}s:\n{self.log()[-4000:]}")

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

    def start(concurrency: int = 4, queue: str | None = None, command: str = "celery",
              **overrides: str) -> WorkerProcess:
        queue = queue or f"payments_test_{uuid.uuid4().hex[:8]}"
        env = worker_env(database_url, broker_url, stripe_fake.url, queue, **overrides)
        log_path = tmp_path_factory.mktemp("worker") / "worker.log"
        worker = WorkerProcess(env, log_path, concurrency, command=command)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()
    for queue in dict.fromkeys(w.queue for w in started):
        drop_queue(broker_url, queue)


@pytest.fixture(scope="session")
def worker(start_worker: Callable[..., WorkerProcess]) -> WorkerProcess:
    """The shared worker most tests publish to."""
    return start_worker()


@pytest.fixture(scope="session")
def upstream(broker_url: str) -> Iterator[Celery]:
    """A bare Celery app, as an upstream web app has it: none of payworker's code."""
    app = upstream_app(broker_url)
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
def no_faults(stripe_fake: FakeStripe) -> Iterator[None]:
    """The fake is shared by the whole session: no fault may outlive its test. Files that
    inject faults use it on every test (`pytestmark = pytest.mark.usefixtures(...)`)."""
    stripe_fake.clear_faults()
    yield
    stripe_fake.clear_faults()


@pytest.fixture
def ids() -> Callable[[str], str]:
    """Unique ids per test, so tests share one database and one fake without clashing."""
    suffix = uuid.uuid4().hex[:10]
    return lambda name: f"{name}-{suffix}"


def event_rows(engine: Engine, event_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The ledger rows of these events, by event id (an event without a row is absent)."""
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT * FROM payment_events WHERE event_id = ANY(:ids)"),
            {"ids": list(event_ids)},
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


def duty_row(engine: Engine, queue: str, name: str = "sweep") -> dict[str, Any] | None:
    """The `payworker_duties` row of one periodic duty of a queue, or None."""
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT * FROM payworker_duties WHERE queue = :q AND name = :n"),
            {"q": queue, "n": name},
        ).mappings().first()
        return dict(row) if row is not None else None


def leader_pid(row: dict[str, Any] | None) -> int | None:
    """The process id of a duty's recorded leader ("nodename:pid"), or None."""
    leader = (row or {}).get("leader")
    return int(leader.rsplit(":", 1)[1]) if leader else None
