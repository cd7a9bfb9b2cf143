"""The broker side of a chaos scenario: the upstream publisher, a Redis server of the test's
own, a TCP proxy that can freeze a worker's broker connection, and what a Redis broker still
holds of a batch."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis

from tests.chaos.harness.watch import poll
from tests.conftest import is_rabbitmq, upstream_app


@dataclass(frozen=True)
class Broker:
    name: str  # "redis" or "rabbitmq"
    url: str


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---- publishing ----------------------------------------------------------------------------


class Publisher:
    """What an upstream app does: send_task with JSON kwargs to one queue, no payworker
    code (tests/conftest.py's `upstream_app`: on RabbitMQ the queue is declared as a quorum
    queue and publishes are confirmed)."""

    def __init__(self, broker_url: str, queue: str) -> None:
        self.queue = queue
        self.app = upstream_app(broker_url, name="upstream-chaos")
        self.sent = 0

    def send(self, message_type: str, **kwargs: Any) -> str:
        """Publish one message; returns the Celery task id."""
        result = self.app.send_task(f"payments.{message_type}", kwargs=kwargs, queue=self.queue)
        self.sent += 1
        return str(result.id)

    def send_all(self, messages: Iterable[tuple[str, dict[str, Any]]]) -> int:
        """Publish a batch on one producer; returns how many were sent."""
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
                       parts.port or (5672 if is_rabbitmq(broker_url) else 6379))
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


# ---- Redis of our own ----------------------------------------------------------------------


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


# ---- what a Redis broker still holds -------------------------------------------------------


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
    if is_rabbitmq(broker_url):
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
