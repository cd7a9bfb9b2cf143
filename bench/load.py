"""Load for the benchmark: publish charges the way an upstream app does, either keeping the
workers saturated or at a fixed rate, and read the outcomes back from Postgres."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from sqlalchemy import Engine, text

from bench.app import BARE_TASK
from core.settings import get_settings
from core.signing import signed_headers

PAYWORKER = "payworker"
BARE = "bare"

_DONE = {
    PAYWORKER: "SELECT count(*) FROM payment_events WHERE event_id LIKE :p"
    " AND status IN ('succeeded', 'failed', 'dead')",
    BARE: "SELECT count(*) FROM bench_bare WHERE event_id LIKE :p",
}
_TIMES = {
    PAYWORKER: "SELECT event_id, extract(epoch FROM completed_at), status FROM payment_events"
    " WHERE event_id LIKE :p",
    BARE: "SELECT event_id, extract(epoch FROM done_at), 'succeeded' FROM bench_bare"
    " WHERE event_id LIKE :p",
}


@dataclass
class Load:
    """One batch of charges of one kind; event ids start with `prefix`."""

    kind: str
    prefix: str
    published: dict[str, float] = field(default_factory=dict)  # event_id -> wall time
    started: float = 0.0
    stopped: float = 0.0


class Publisher:
    def __init__(self, broker_url: str, queue: str, users: list[str], engine: Engine) -> None:
        self.app = Celery("bench-upstream", broker=broker_url)
        self.app.conf.task_serializer = "json"
        self.queue = queue
        self.users = users
        self.engine = engine
        self._n = itertools.count()

    def _send(self, load: Load, producer: Any) -> None:
        n = next(self._n)
        event_id = f"{load.prefix}{n}"
        user = self.users[n % len(self.users)]
        if load.kind == PAYWORKER:
            name = "payments.charge_requested"
            kwargs: dict[str, Any] = {
                "event_id": event_id,
                "user_id": user,
                "amount": 1000,
                "currency": "usd",
            }
        else:
            name, kwargs = BARE_TASK, {"event_id": event_id}
        load.published[event_id] = time.time()
        headers = signed_headers(get_settings().message_keyring, name, kwargs)
        self.app.send_task(
            name, kwargs=kwargs, queue=self.queue, producer=producer, headers=headers
        )

    def done(self, load: Load) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(text(_DONE[load.kind]), {"p": load.prefix + "%"}).scalar_one())

    def saturate(self, kind: str, prefix: str, seconds: float, in_flight: int) -> Load:
        """Keep up to `in_flight` charges queued or running for `seconds`, then drain."""
        load = Load(kind, prefix)
        load.started = time.time()
        with self.app.producer_or_acquire() as producer:
            while time.time() < load.started + seconds:
                missing = in_flight - (len(load.published) - self.done(load))
                for _ in range(max(0, missing)):
                    self._send(load, producer)
                time.sleep(0.2)
        load.stopped = time.time()
        self.drain(load)
        return load

    def paced(self, kind: str, prefix: str, rate: float, seconds: float) -> Load:
        """Publish `rate` charges per second for `seconds`, each at its own moment."""
        load = Load(kind, prefix)
        load.started = time.time()
        with self.app.producer_or_acquire() as producer:
            for i in range(int(rate * seconds)):
                delay = load.started + i / rate - time.time()
                if delay > 0:
                    time.sleep(delay)
                self._send(load, producer)
        load.stopped = time.time()
        self.drain(load)
        return load

    def drain(self, load: Load, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while self.done(load) < len(load.published):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{len(load.published) - self.done(load)} {load.kind} charges unfinished"
                    f" after {timeout}s"
                )
            time.sleep(0.2)

    def outcomes(self, load: Load) -> list[tuple[str, float, str]]:
        """(event_id, completion wall time, status) of every charge of the load."""
        with self.engine.connect() as conn:
            rows = conn.execute(text(_TIMES[load.kind]), {"p": load.prefix + "%"})
            return [(str(e), float(t), str(s)) for e, t, s in rows]


def sustained_rate(times: list[float], start: float, end: float) -> float:
    """Completions per second within [start, end)."""
    return sum(1 for t in times if start <= t < end) / (end - start)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]
