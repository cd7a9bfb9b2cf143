"""The worker the benchmark runs: payworker's own Celery app, unchanged, plus one bare task
as the baseline (`celery -A bench.app worker ...`).

The bare task does the least a charge could do: one HTTP POST to the same Stripe stub and
one INSERT of its result, in the same pool, with the same broker settings and the same
engine sizing as payworker's tasks. No ledger, no idempotency key, no rate limiter."""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import requests
from sqlalchemy import text

from core.settings import get_settings
from db.session import get_engine
from tasks.resources import db_pool_size
from worker.app import create_app
from worker.metrics import PrometheusTelemetry

BARE_TASK = "bench.bare_charge"
BARE_TABLE = """
CREATE TABLE IF NOT EXISTS bench_bare (
    event_id text PRIMARY KEY,
    charge_id text NOT NULL,
    done_at timestamptz NOT NULL
)"""

_local = threading.local()
# When set, every Stripe request payworker sends is logged (send time, wall clock) to a
# file per process here: the limit can then be checked where it is applied, not only where
# the stub counts arrivals.
SENDS_DIR = os.environ.get("BENCH_SENDS_DIR")
_sends: dict[int, TextIO] = {}
_sends_lock = threading.Lock()


def _record_send(method: str, path: str, status: int | None, seconds: float) -> None:
    sent_at = time.time() - seconds
    with _sends_lock:
        out = _sends.get(os.getpid())
        if out is None:
            assert SENDS_DIR is not None
            out = _sends[os.getpid()] = (Path(SENDS_DIR) / f"sends-{os.getpid()}.txt").open("a")
        out.write(f"{sent_at:.6f}\n")
        out.flush()


class _SendsTelemetry(PrometheusTelemetry):
    """payworker's own metrics, plus every Stripe request's send time in a file."""

    def stripe_request(
        self, method: str, endpoint: str, status: int | None, seconds: float
    ) -> None:
        super().stripe_request(method, endpoint, status, seconds)
        _record_send(method, endpoint, status, seconds)


app = create_app(_SendsTelemetry() if SENDS_DIR else None)


def _session() -> requests.Session:
    session: requests.Session | None = getattr(_local, "session", None)
    if session is None:
        session = _local.session = requests.Session()
    return session


@app.task(name=BARE_TASK, acks_late=True, ignore_result=True)
def bare_charge(event_id: str, amount: int = 1000, currency: str = "usd") -> None:
    settings = get_settings()
    response = _session().post(
        f"{settings.stripe_api_base}/v1/charges",
        data={"amount": amount, "currency": currency, "metadata[event_id]": event_id},
        timeout=settings.stripe_call_timeout,
    )
    response.raise_for_status()
    charge: dict[str, Any] = response.json()
    engine = get_engine(
        settings.database_url,
        pool_size=db_pool_size(settings, app.conf.worker_concurrency or 1),
        max_overflow=2,
    )
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO bench_bare (event_id, charge_id, done_at) VALUES (:e, :c, :d)"),
            {"e": event_id, "c": charge["id"], "d": datetime.now(UTC)},
        )


__all__ = ["BARE_TABLE", "BARE_TASK", "app"]
