"""Shared machinery of the chaos scenarios in test_recovery_points.py,
test_service_restarts.py and test_stripe_storm.py: killable worker process groups, a
dedicated database, an own Redis, a publisher that declares the queue like the worker
does, a batch generator, and the check "does the world agree with Stripe"."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from celery import Celery
from kombu import Connection, Exchange, Queue
from sqlalchemy import Engine, create_engine, text

from db.migrate import migrate
from stripe_fake import FakeStripe

ROOT = Path(__file__).resolve().parents[2]
PG_ADMIN_URL = os.environ.get("TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432")
TERMINAL = ("succeeded", "failed", "dead")
VISA = "4242424242424242"
# Attaches fine, then every charge on it is declined (localstripe).
DECLINED_AT_CHARGE = "4000000000000341"
# 16-digit test numbers with distinct fingerprints that localstripe attaches and charges.
CARD_NUMBERS = (
    "4242424242424242", "4000056655665556", "5555555555554444", "2223003122003222",
    "5200828282828210", "5105105105105100", "6011111111111117", "3056930009020004",
    "3566002020360505", "6200000000000005", "4012888888881881", "6011000990139424",
    "3566111111111113",
)


def figures(scenario: str, **values: Any) -> str:
    """One greppable line of figures per test, printed with -s."""
    line = f"[chaos] {scenario}: " + " ".join(f"{k}={v}" for k, v in values.items())
    print(line, flush=True)
    return line


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def is_redis(url: str) -> bool:
    return url.startswith(("redis://", "rediss://"))


# ---- workers ---------------------------------------------------------------------------


def chaos_env(
    database_url: str, broker_url: str, stripe_url: str, queue: str, **overrides: str
) -> dict[str, str]:
    """A worker environment with the short lease the issue asks for: lease 6 s, sweep 1 s,
    visibility timeout 60 s. Backoff is fast so retries scheduled in the ledger come soon."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": broker_url,
        "STRIPE_API_KEY": "sk_test_payworker_chaos",
        "STRIPE_API_BASE": stripe_url,
        "PAYWORKER_QUEUE": queue,
        "PAYWORKER_LEASE_SECONDS": "6",
        "PAYWORKER_SWEEP_SECONDS": "1",
        "PAYWORKER_VISIBILITY_TIMEOUT": "60",
        "PAYWORKER_RETRY_BACKOFF_BASE": "0.2",
        "PAYWORKER_RETRY_BACKOFF_MAX": "1.5",
        "PAYWORKER_STRIPE_TIMEOUT": "2",
        "PAYWORKER_STRIPE_NETWORK_RETRIES": "0",
        "PAYWORKER_PREREQUISITE_WAIT_SECONDS": "120",
        "PAYWORKER_MAX_ATTEMPTS": "30",
        # The fake is not Stripe: no account limit to respect. At the default (90% of test
        # mode's 25/s) a 500-event batch would queue for the limiter for minutes, and the
        # limiter is not what these scenarios test (tests/integration/test_ratelimit.py is).
        "PAYWORKER_STRIPE_RATE": "1000",
        "PYTHONPATH": str(ROOT),
    }
    env.update(overrides)
    return env


class ChaosWorker:
    """`celery -A worker worker --beat` in its own session (process group), so that the
    main process, its pool children and the embedded beat die together on SIGKILL."""

    def __init__(
        self, env: dict[str, str], log_path: Path, concurrency: int = 4, ready_timeout: float = 40
    ) -> None:
        self.env = env
        self.log_path = log_path
        self.queue = env["PAYWORKER_QUEUE"]
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker", "worker", "-Q", self.queue,
             "--concurrency", str(concurrency), "--loglevel", "INFO", "--beat",
             "--hostname", f"chaos-{uuid.uuid4().hex[:8]}@%h", "--without-mingle",
             "--without-gossip", "--without-heartbeat"],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pgid = self.proc.pid  # a new session leader: its pid is the group id
        self.concurrency = concurrency
        self.killed = False  # by the test
        self.replaced = False  # by WorkerPool.supervise
        self._ready_timeout = ready_timeout

    def wait_ready(self) -> ChaosWorker:
        deadline = time.monotonic() + self._ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log()[-4000:]}")
            if "ready." in self.log():
                return self
            time.sleep(0.05)
        raise RuntimeError(f"worker not ready in {self._ready_timeout}s:\n{self.log()[-4000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group: no warm shutdown, no ack, no cleanup."""
        self.killed = True
        with suppress(ProcessLookupError):
            os.killpg(self.pgid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        """Warm shutdown, then make sure nothing of the group survives."""
        if self.proc.poll() is None:
            self.proc.terminate()
            with suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=15)
        with suppress(ProcessLookupError):
            os.killpg(self.pgid, signal.SIGKILL)  # stray pool children or the beat process
        if self.proc.poll() is None:
            self.proc.wait(timeout=10)
        self._log.close()


class WorkerPool:
    """Starts ChaosWorkers on one queue and stops every one of them at the end."""

    def __init__(
        self, database_url: str, broker_url: str, stripe_url: str, log_dir: Path,
        queue: str | None = None, **overrides: str,
    ) -> None:
        self.database_url = database_url
        self.broker_url = broker_url
        self.stripe_url = stripe_url
        self.log_dir = log_dir
        self.queue = queue or f"chaos_{uuid.uuid4().hex[:8]}"
        self.overrides = overrides
        self.started: list[ChaosWorker] = []
        self.supervisor_restarts = 0

    def start(self, concurrency: int = 4, wait: bool = True, **overrides: str) -> ChaosWorker:
        env = chaos_env(self.database_url, self.broker_url, self.stripe_url, self.queue,
                        **{**self.overrides, **overrides})
        log_path = self.log_dir / f"worker-{len(self.started)}-{uuid.uuid4().hex[:6]}.log"
        worker = ChaosWorker(env, log_path, concurrency)
        self.started.append(worker)
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
        with suppress(Exception):  # a broker that is gone by now has nothing to clean
            drop_queue(self.broker_url, self.queue)

    def logs(self) -> str:
        return "\n".join(w.log() for w in self.started)


# ---- Postgres ----------------------------------------------------------------------------


@contextmanager
def dedicated_database(prefix: str) -> Iterator[str]:
    """A database of its own for one module (its own counts, its own connections to kill)."""
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    url = f"{PG_ADMIN_URL}/{name}"
    migrate(url)
    try:
        yield url
    finally:
        admin = create_engine(f"{PG_ADMIN_URL}/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def event_rows(engine: Engine, event_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT * FROM payment_events WHERE event_id = ANY(:ids)"),
            {"ids": list(event_ids)},
        ).mappings()
        return {row["event_id"]: dict(row) for row in rows}


def event_row(engine: Engine, event_id: str) -> dict[str, Any] | None:
    return event_rows(engine, [event_id]).get(event_id)


def status_counts(engine: Engine, event_ids: Iterable[str]) -> Counter[str]:
    ids = list(event_ids)
    rows = event_rows(engine, ids)
    counts: Counter[str] = Counter(r["status"] for r in rows.values())
    counts["missing"] = len(ids) - len(rows)
    return +counts


def wait_final(
    engine: Engine, event_ids: Iterable[str], timeout: float,
    during: Callable[[], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Rows of the events once all are final. On timeout, returns what there is: the caller
    counts the unfinished ones as lost and fails with the figures printed."""
    ids = list(event_ids)
    deadline = time.monotonic() + timeout
    rows: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        if during is not None:
            during()
        rows = event_rows(engine, ids)
        if len(rows) == len(ids) and all(r["status"] in TERMINAL for r in rows.values()):
            break
        time.sleep(0.25)
    return rows


def unfinished(rows: dict[str, dict[str, Any]], event_ids: Iterable[str]) -> list[str]:
    return [e for e in event_ids if rows.get(e, {}).get("status") not in TERMINAL]


def poll(condition: Callable[[], Any], timeout: float, what: str, step: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# ---- publishing ----------------------------------------------------------------------------


def payments_queue(broker_url: str, name: str) -> Queue:
    """The queue as the worker declares it (celeryconfig.py): plain on Redis, quorum on
    RabbitMQ, where a publisher declaring it differently would be refused."""
    if is_redis(broker_url):
        return Queue(name)
    return Queue(name, Exchange(name, type="direct"), routing_key=name,
                 queue_arguments={"x-queue-type": "quorum"}, durable=True)


def drop_queue(broker_url: str, queue: str) -> None:
    """Delete a test queue, and on Redis the unacked copies of its messages that killed
    workers left behind, so that neither broker accumulates them run after run."""
    declared = payments_queue(broker_url, queue)
    with Connection(broker_url, connect_timeout=5) as conn:
        bound = declared(conn.default_channel)
        bound.declare()  # kombu's Redis transport deletes only bindings it declared
        bound.delete()
        if not is_redis(broker_url):
            with suppress(Exception):
                bound.exchange.delete()
    if is_redis(broker_url):
        client = redis.Redis.from_url(broker_url)
        try:
            for tag, raw in client.hgetall("unacked").items():
                with suppress(ValueError, IndexError, TypeError):
                    if json.loads(raw)[2] == queue:
                        client.hdel("unacked", tag)
                        client.zrem("unacked_index", tag)
        finally:
            client.close()


class Publisher:
    """What an upstream app does: send_task with JSON kwargs, no payworker code."""

    def __init__(self, broker_url: str, queue: str) -> None:
        self.queue = queue
        self.app = Celery("chaos-upstream", broker=broker_url)
        self.app.conf.task_serializer = "json"
        self.app.conf.task_queues = (payments_queue(broker_url, queue),)
        self.app.conf.broker_connection_retry_on_startup = True
        if not is_redis(broker_url):
            self.app.conf.broker_transport_options = {"confirm_publish": True}
        self.sent = 0

    def send(self, message_type: str, **kwargs: Any) -> None:
        self.app.send_task(f"payments.{message_type}", kwargs=kwargs, queue=self.queue)
        self.sent += 1

    def send_all(self, messages: Iterable[tuple[str, dict[str, Any]]]) -> int:
        count = 0
        with self.app.producer_or_acquire() as producer:
            for message_type, kwargs in messages:
                self.app.send_task(f"payments.{message_type}", kwargs=kwargs,
                                   queue=self.queue, producer=producer)
                count += 1
        self.sent += count
        return count

    def close(self) -> None:
        self.app.close()


# ---- a broker connection that can be frozen ------------------------------------------------


class FreezableProxy:
    """A TCP proxy between workers and the broker, run in a background thread. While
    frozen, it holds every byte the workers send (answers still flow back). `discard()`
    then closes every connection without forwarding what it held: whatever the workers
    wrote during the freeze (an ack, say) never reaches the broker."""

    def __init__(self, broker_url: str) -> None:
        parts = urlsplit(broker_url)
        self.target = (parts.hostname or "127.0.0.1",
                       parts.port or (6379 if is_redis(broker_url) else 5672))
        self.port = free_port()
        netloc = parts.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{self.port}"
        self.url = urlunsplit(parts._replace(
            netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))
        self.frozen = False
        self.held_bytes = 0
        self._discarding = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        started = threading.Event()
        threading.Thread(target=self._run, args=(started,), daemon=True).start()
        started.wait(10)

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", self.port))
        started.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                       freezable: bool) -> None:
            try:
                while data := await src.read(65536):
                    if freezable and self.frozen:
                        self.held_bytes += len(data)
                        while self.frozen and not self._discarding:
                            await asyncio.sleep(0.005)
                    if freezable and self._discarding:
                        break
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                for w in (writer, up_writer):
                    w.close()
                self._writers -= {writer, up_writer}

        await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False))

    def freeze(self) -> None:
        self.frozen = True

    def discard(self) -> None:
        """Close every connection, dropping held bytes; then pass traffic again."""
        def close_all() -> None:
            self._discarding = True
            for w in list(self._writers):
                w.close()

        self._loop.call_soon_threadsafe(close_all)
        time.sleep(0.2)
        self.frozen = False
        self._discarding = False

    def close(self) -> None:
        def stop() -> None:
            for w in list(self._writers):
                w.close()
            if self._server is not None:
                self._server.close()
            self._loop.stop()

        self._loop.call_soon_threadsafe(stop)


# ---- Redis of our own ------------------------------------------------------------------------


class RedisServer:
    """A redis-server on its own port with AOF on and fsync at every write, as production
    should run it; restartable on the same data directory."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = (self.data_dir / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.data_dir),
             "--save", "", "--protected-mode", "yes"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        poll(lambda: self._ping(), 15, f"redis on port {self.port}", step=0.05)
        return self

    def _ping(self) -> bool:
        try:
            out = subprocess.run(["redis-cli", "-p", str(self.port), "ping"],
                                 capture_output=True, timeout=2, check=False)
        except subprocess.TimeoutExpired:
            return False
        return out.stdout.strip() == b"PONG"

    def stop(self, graceful: bool = True) -> None:
        """SIGTERM: Redis finishes the AOF and exits (SIGKILL when not graceful)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self, down_seconds: float = 1.0) -> float:
        """Stop, stay down a moment, start on the same directory; returns seconds down."""
        started = time.monotonic()
        self.stop()
        time.sleep(down_seconds)
        self.start()
        self.restarts += 1
        return time.monotonic() - started

    def llen(self, key: str) -> int:
        out = subprocess.run(["redis-cli", "-p", str(self.port), "llen", key],
                             capture_output=True, timeout=5, check=True)
        return int(out.stdout.strip() or 0)


# ---- batches of mixed events -------------------------------------------------------------------


@dataclass
class Batch:
    """Messages to publish, and what each event may end as."""

    messages: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # event_id -> acceptable (status, error_code) outcomes
    expected: dict[str, set[tuple[str, str | None]]] = field(default_factory=dict)
    user_ids: set[str] = field(default_factory=set)

    def add(self, message_type: str, outcomes: set[tuple[str, str | None]],
            **kwargs: Any) -> str:
        self.messages.append((message_type, kwargs))
        self.expected[kwargs["event_id"]] = outcomes
        self.user_ids.add(kwargs["user_id"])
        return str(kwargs["event_id"])

    @property
    def event_ids(self) -> list[str]:
        return list(self.expected)

    def types(self) -> Counter[str]:
        return Counter(t for t, _ in self.messages)

    def wrong_outcomes(self, rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
        wrong = {}
        for event_id, outcomes in self.expected.items():
            row = rows.get(event_id)
            got = (row["status"], row["error_code"]) if row else ("missing", None)
            if got not in outcomes:
                wrong[event_id] = {"got": got, "expected": sorted(outcomes, key=str),
                                   "last_error": row and row.get("last_error")}
        return wrong


OK = {("succeeded", None)}
DECLINED = {("failed", "card_declined")}


@dataclass
class PreparedUser:
    """A registered user with two active cards: `first` (default) and `second`."""

    user_id: str
    customer_id: str
    first: str
    second: str


def setup_batch(tag: str, users: int, fake: FakeStripe) -> Batch:
    """Registrations first, then a card each, then charges (for prepared users, or to run
    before their own registrations are done: out of order messages wait in the ledger)."""
    batch = Batch()
    for i in range(users):
        user = f"{tag}-u{i}"
        batch.add("user_registered", OK, event_id=f"{user}-reg", user_id=user,
                  email=f"{user}@example.com", name=f"User {i}")
    for i in range(users):
        user = f"{tag}-u{i}"
        batch.add("card_token_received", OK, event_id=f"{user}-card1", user_id=user,
                  token=fake.create_card_token(CARD_NUMBERS[i % len(CARD_NUMBERS)]))
        batch.add("card_token_received", OK, event_id=f"{user}-card2", user_id=user,
                  token=fake.create_card_token(CARD_NUMBERS[(i + 1) % len(CARD_NUMBERS)]))
    return batch


def ordered_batch(tag: str, users: int, charges_per_user: int, fake: FakeStripe) -> Batch:
    """Registrations first, then one card each, then the charges, in that order (charges
    that overtake their card wait for it in the ledger). Every 10th user's card is declined
    at charge time, so failures are part of the mix."""
    batch = Batch()
    for i in range(users):
        user = f"{tag}-u{i}"
        batch.add("user_registered", OK, event_id=f"{user}-reg", user_id=user,
                  email=f"{user}@example.com")
    for i in range(users):
        user = f"{tag}-u{i}"
        number = DECLINED_AT_CHARGE if i % 10 == 7 else CARD_NUMBERS[i % len(CARD_NUMBERS)]
        batch.add("card_token_received", OK, event_id=f"{user}-card", user_id=user,
                  token=fake.create_card_token(number))
    for c in range(charges_per_user):
        for i in range(users):
            user = f"{tag}-u{i}"
            batch.add("charge_requested", DECLINED if i % 10 == 7 else OK,
                      event_id=f"{user}-chg{c}", user_id=user, amount=900 + 10 * c + i,
                      currency="usd")
    return batch


def mixed_batch(tag: str, fake: FakeStripe, prepared: list[PreparedUser],
                new_users: int, seed: int) -> Batch:
    """A mix of every message type, with known right outcomes:

    - new users: registration, a card (every 7th user sends the same card twice, with two
      tokens: one attach, one `duplicate`), every 9th user's card is declined at charge
      time, and two charges on the default card (three for every 5th user);
    - prepared users (two cards): switch the default to the second card, remove the first
      card, and two charges named on the second card (no race with the removal).

    Messages are shuffled: charges may arrive before their user's card or registration and
    must wait for it in the ledger."""
    rng = random.Random(seed)
    batch = Batch()
    for i in range(new_users):
        user = f"{tag}-n{i}"
        declined = i % 9 == 4
        number = DECLINED_AT_CHARGE if declined else CARD_NUMBERS[i % len(CARD_NUMBERS)]
        batch.add("user_registered", OK, event_id=f"{user}-reg", user_id=user,
                  email=f"{user}@example.com")
        batch.add("card_token_received", OK, event_id=f"{user}-card", user_id=user,
                  token=fake.create_card_token(number), make_default=(i % 3 == 0))
        if i % 7 == 3:
            batch.add("card_token_received", OK, event_id=f"{user}-card-again", user_id=user,
                      token=fake.create_card_token(number))
        for c in range(3 if i % 5 == 0 else 2):
            batch.add("charge_requested", DECLINED if declined else OK,
                      event_id=f"{user}-chg{c}", user_id=user, amount=1000 + 37 * c + i,
                      currency=rng.choice(["usd", "eur", "gbp"]),
                      description=f"order {i}/{c}")
    for p in prepared:
        batch.add("default_card_changed", OK, event_id=f"{p.user_id}-{tag}-default",
                  user_id=p.user_id, card_id=p.second)
        batch.add("card_removed", OK, event_id=f"{p.user_id}-{tag}-remove",
                  user_id=p.user_id, card_id=p.first)
        for c in range(2):
            batch.add("charge_requested", OK, event_id=f"{p.user_id}-{tag}-chg{c}",
                      user_id=p.user_id, amount=2500 + c, currency="usd", card_id=p.second)
    rng.shuffle(batch.messages)
    return batch


def prepared_users(engine: Engine, user_ids: Iterable[str]) -> list[PreparedUser]:
    """Users of setup_batch once it finished: their customer and two cards, default first."""
    out = []
    with engine.connect() as conn:
        for user in sorted(user_ids):
            customer = conn.execute(
                text("SELECT stripe_customer_id FROM customers WHERE user_id = :u"), {"u": user}
            ).scalar_one()
            cards = conn.execute(
                text("SELECT stripe_card_id, is_default FROM cards WHERE user_id = :u"
                     " AND removed_at IS NULL ORDER BY is_default DESC, created_at"),
                {"u": user},
            ).all()
            assert len(cards) == 2 and cards[0][1], (user, cards)
            out.append(PreparedUser(user, customer, cards[0][0], cards[1][0]))
    return out


# ---- does the world agree with Stripe? -----------------------------------------------------------


@dataclass
class WorldReport:
    users: int = 0
    stripe_customers: int = 0
    stripe_cards: int = 0
    stripe_charges: int = 0
    duplicates: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.duplicates and not self.mismatches

    def summary(self) -> str:
        head = (f"users={self.users} stripe_customers={self.stripe_customers}"
                f" stripe_cards={self.stripe_cards} stripe_charges={self.stripe_charges}"
                f" duplicates={len(self.duplicates)} mismatches={len(self.mismatches)}")
        details = self.duplicates[:20] + self.mismatches[:20]
        return head + "".join(f"\n  {d}" for d in details)


def _rows(engine: Engine, sql: str, users: list[str]) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(text(sql), {"users": users}).mappings()]


def check_world(engine: Engine, fake: FakeStripe, user_ids: Iterable[str]) -> WorldReport:
    """Compare Postgres (customers, cards, charges, ledger) with what the Stripe fake holds,
    object by object, for the given users. Stripe is read through the fake's control reads,
    which bypass faults and the request log. Returns duplicates (two Stripe objects for one
    intent) and mismatches (an object on one side only, or disagreeing fields)."""
    users = sorted(set(user_ids))
    wanted = set(users)
    report = WorldReport(users=len(users))
    dup, bad = report.duplicates, report.mismatches

    # Customers: one per user on Stripe, and the customers row points at it.
    stripe_customers: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for customer in fake.list_customers():
        owner = (customer.get("metadata") or {}).get("user_id")
        if owner in wanted:
            stripe_customers[owner].append(customer)
    report.stripe_customers = sum(len(v) for v in stripe_customers.values())
    rows = {r["user_id"]: r for r in _rows(
        engine, "SELECT * FROM customers WHERE user_id = ANY(:users)", users)}
    for user, found in stripe_customers.items():
        if len(found) > 1:
            dup.append(f"user {user}: {len(found)} Stripe customers {[c['id'] for c in found]}")
        row = rows.get(user)
        if row is None:
            bad.append(f"user {user}: Stripe customer {found[0]['id']} has no customers row")
    for user, row in rows.items():
        ids = [c["id"] for c in stripe_customers.get(user, [])]
        if row["stripe_customer_id"] not in ids:
            bad.append(f"user {user}: customers row {row['stripe_customer_id']} not on Stripe")
            continue
        meta = next(c for c in stripe_customers[user] if c["id"] == row["stripe_customer_id"])
        if meta["metadata"].get("event_id") != row["event_id"]:
            bad.append(f"user {user}: customer metadata event_id {meta['metadata']}"
                       f" != row event_id {row['event_id']}")

    # Cards and charges, for every Stripe customer of these users (orphans included).
    card_rows = {r["stripe_card_id"]: r for r in _rows(
        engine, "SELECT * FROM cards WHERE user_id = ANY(:users)", users)}
    charge_rows = _rows(engine, "SELECT * FROM charges WHERE user_id = ANY(:users)", users)
    stripe_cards: dict[str, dict[str, Any]] = {}
    stripe_charges: dict[str, dict[str, Any]] = {}
    defaults: dict[str, str | None] = {}
    for user, found in stripe_customers.items():
        for customer in found:
            defaults[user] = customer.get("default_source") if len(found) == 1 else None
            for card in fake.list_cards(customer["id"]):
                stripe_cards[card["id"]] = {**card, "_user": user}
            for charge in fake.list_charges(customer["id"]):
                stripe_charges[charge["id"]] = {**charge, "_user": user}
    report.stripe_cards = len(stripe_cards)
    report.stripe_charges = len(stripe_charges)

    by_event: dict[str, list[str]] = defaultdict(list)
    by_fingerprint: dict[tuple[str, str], list[str]] = defaultdict(list)
    for card_id, card in stripe_cards.items():
        by_event[(card.get("metadata") or {}).get("event_id", "?")].append(card_id)
        by_fingerprint[(card["_user"], card.get("fingerprint", "?"))].append(card_id)
        row = card_rows.get(card_id)
        if row is None:
            bad.append(f"Stripe card {card_id} of {card['_user']} has no cards row")
        elif row["removed_at"] is not None:
            bad.append(f"card {card_id}: removed in Postgres but still on Stripe")
        elif row["event_id"] != card["metadata"].get("event_id"):
            bad.append(f"card {card_id}: row event {row['event_id']} != Stripe metadata"
                       f" {card['metadata']}")
        elif row["fingerprint"] != card.get("fingerprint"):
            bad.append(f"card {card_id}: fingerprint differs")
    for event, cards in by_event.items():
        if len(cards) > 1:
            dup.append(f"event {event}: {len(cards)} Stripe cards {cards}")
    for (user, _), cards in by_fingerprint.items():
        if len(cards) > 1:
            dup.append(f"user {user}: same card attached {len(cards)} times {cards}")
    active_default: dict[str, str] = {}
    for card_id, row in card_rows.items():
        if row["removed_at"] is None:
            if card_id not in stripe_cards:
                bad.append(f"card {card_id}: active in Postgres but not on Stripe")
            if row["is_default"]:
                active_default[row["user_id"]] = card_id
    for user in stripe_customers:
        if defaults.get(user) != active_default.get(user):
            bad.append(f"user {user}: Stripe default {defaults.get(user)}"
                       f" != Postgres default {active_default.get(user)}")

    charges_by_event: dict[str, list[str]] = defaultdict(list)
    for charge_id, charge in stripe_charges.items():
        charges_by_event[(charge.get("metadata") or {}).get("event_id", "?")].append(charge_id)
    for event, charges in charges_by_event.items():
        if len(charges) > 1:
            dup.append(f"event {event}: {len(charges)} Stripe charges {charges}")
    rows_by_charge: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in charge_rows:
        if row["status"] == "pending":
            bad.append(f"charge event {row['event_id']}: still pending")
        if row["stripe_charge_id"] is None:
            if charges_by_event.get(row["event_id"]):
                bad.append(f"charge event {row['event_id']}: Stripe has"
                           f" {charges_by_event[row['event_id']]}, the row has no charge id")
            continue
        rows_by_charge[row["stripe_charge_id"]].append(row)
        charge = stripe_charges.get(row["stripe_charge_id"])
        if charge is None:
            bad.append(f"charge event {row['event_id']}: {row['stripe_charge_id']} not on Stripe")
            continue
        if charge["metadata"].get("event_id") != row["event_id"]:
            bad.append(f"charge {charge['id']}: metadata {charge['metadata']} != row event"
                       f" {row['event_id']}")
        if charge["status"] != row["status"] or charge["amount"] != row["amount"]:
            bad.append(f"charge {charge['id']}: Stripe {charge['status']}/{charge['amount']}"
                       f" != row {row['status']}/{row['amount']}")
        # localstripe names the charged card `payment_method` (Stripe: `source.id`)
        charged = charge.get("payment_method") or (charge.get("source") or {}).get("id")
        if charged != row["stripe_card_id"]:
            bad.append(f"charge {charge['id']}: charged card {charged} != row's"
                       f" {row['stripe_card_id']}")
    for charge_id in stripe_charges:
        count = len(rows_by_charge.get(charge_id, []))
        if count != 1:
            bad.append(f"Stripe charge {charge_id}: {count} charges rows")

    # The ledger: a succeeded charge event names the charge its row holds.
    events = _rows(engine, "SELECT event_id, type, status, result FROM payment_events"
                           " WHERE user_id = ANY(:users)", users)
    by_id = {r["event_id"]: r for r in charge_rows}
    for event in events:
        if event["type"] == "charge_requested" and event["status"] == "succeeded":
            row = by_id.get(event["event_id"])
            got = (event["result"] or {}).get("charge_id")
            if row is None or row["stripe_charge_id"] != got:
                bad.append(f"event {event['event_id']}: result charge {got} != row"
                           f" {row and row['stripe_charge_id']}")
    return report


def duplicate_deliveries(worker_logs: str) -> int:
    return worker_logs.count("duplicate delivery ignored")


def _event_id_of(raw: bytes) -> str | None:
    """The event_id kwarg of a kombu Redis message (JSON envelope, base64 JSON body)."""
    try:
        body = json.loads(base64.b64decode(json.loads(raw)["body"]))
        event_id = body[1].get("event_id")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None
    return event_id if isinstance(event_id, str) else None


def unacked_event_ids(broker_url: str) -> set[str]:
    """Event ids of messages a Redis broker holds as delivered but not acked (kombu's
    `unacked` hash): evidence that a killed worker never acked them. Empty on RabbitMQ."""
    if not is_redis(broker_url):
        return set()
    client = redis.Redis.from_url(broker_url)
    try:
        found = set()
        for raw in client.hvals("unacked"):
            try:
                envelope = json.dumps(json.loads(raw)[0]).encode()
            except (ValueError, IndexError, TypeError):
                continue
            event_id = _event_id_of(envelope)
            if event_id is not None:
                found.add(event_id)
        return found
    finally:
        client.close()


def queued_event_ids(broker_url: str, queue: str) -> set[str]:
    """Event ids of the messages waiting in a Redis queue (a kombu list), or taken off it
    by a consumer that has not recorded them as unacked yet (the queue's claimed list,
    worker/redis_transport.py)."""
    client = redis.Redis.from_url(broker_url)
    try:
        raws = client.lrange(queue, 0, -1) + client.lrange(f"payworker.claimed:{queue}", 0, -1)
        ids = (_event_id_of(raw) for raw in raws)
        return {e for e in ids if e is not None}
    finally:
        client.close()


def explain(engine: Engine, event_ids: Iterable[str], logs: str, limit: int = 5) -> str:
    """The ledger row and the worker log lines of some events, for a failure message."""
    ids = list(event_ids)[:limit]
    rows = event_rows(engine, ids)
    out = []
    for event_id in ids:
        row = rows.get(event_id)
        if row is None:
            out.append(f"{event_id}: NO LEDGER ROW (the message never reached a worker)")
        else:
            keep = ("status", "recovery_point", "attempts", "transient_failures", "redrives",
                    "locked_by", "locked_until", "next_attempt_at", "last_error", "error_code")
            out.append(f"{event_id}: " + ", ".join(f"{k}={row[k]!r}" for k in keep))
        lines = [line for line in logs.splitlines() if event_id in line]
        out.extend(f"    {line[:300]}" for line in lines[-8:])
    return "\n".join(out)
