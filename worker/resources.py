"""Per-process resources (engine, Stripe gateway, rate limiter), built on first use after
the fork.

Under the thread pool every task thread of a process shares them: the engine's pool holds
a connection per concurrent task (connections are taken only inside short transactions,
never across a Stripe call), the Stripe HTTP client keeps one requests session per thread,
and the limiter's Redis client is thread-safe and built lazily in each process."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from celery import concurrency, signals
from sqlalchemy import Engine

from db.session import get_engine
from tasks.errors import ConfigurationFault
from tasks.gateway import StripeGateway
from tasks.ratelimit import Limiter, LocalLimiter, Pace, RedisLimiter, bucket_for
from tasks.redact import register_secret
from tasks.sealing import TokenSealer
from tasks.stripe_http import Observer, set_run_deadline
from worker.settings import Settings, get_settings

logger = logging.getLogger("payworker")

# Pools that run many tasks in one process; prefork and solo run one per process.
_SHARED_POOLS = (
    "celery.concurrency.thread",
    "celery.concurrency.gevent",
    "celery.concurrency.eventlet",
)
# Connections beyond the tasks' own: the beat's sweep task and a spare.
_SPARE_CONNECTIONS = 2
# A task holds a connection only inside its short transactions, so a thread pool needs far
# fewer connections than threads. Uncapped, 48 threads saturating one process held 23-30
# at once, mostly while waiting for the GIL mid-transaction; with the cap they wait before
# the transaction instead, and two workers stay well below Postgres' 100 connections.
_MAX_TASK_CONNECTIONS = 16


@dataclass(frozen=True)
class Resources:
    settings: Settings
    engine: Engine
    gateway: StripeGateway
    sealer: TokenSealer
    limiter: Limiter


_by_pid: dict[int, Resources] = {}
# Called after every Stripe HTTP request of this process (see observe_stripe).
_observers: list[Observer] = []
_lock = threading.Lock()
# Tasks that run at once in one process of this worker, learnt at worker start.
_tasks_per_process: int | None = None


def resources() -> Resources:
    """This process's resources. Raises ConfigurationFault when STRIPE_API_KEY is unset."""
    pid = os.getpid()
    found = _by_pid.get(pid)
    if found is None:
        with _lock:
            found = _by_pid.get(pid)
            if found is None:
                found = _build(get_settings())
                _by_pid.clear()  # anything inherited from a parent process is not ours to use
                _by_pid[pid] = found
    return found


def _build(settings: Settings) -> Resources:
    if settings.stripe_api_key is None:
        raise ConfigurationFault("STRIPE_API_KEY is not set")
    api_key = settings.stripe_api_key.get_secret_value()
    register_secret(api_key)
    limiter = build_limiter(settings, api_key)
    gateway = StripeGateway.build(
        api_key,
        api_base=settings.stripe_api_base,
        timeout=settings.stripe_call_timeout,
        network_retries=settings.stripe_network_retries,
        limiter=limiter,
        observer=_notify_observers,
    )
    sealer = TokenSealer(settings.seal_secret or api_key)
    engine = get_engine(
        settings.database_url, pool_size=db_pool_size(settings), max_overflow=_SPARE_CONNECTIONS
    )
    return Resources(settings, engine, gateway, sealer, limiter)


def observe_stripe(observer: Observer) -> None:
    """Call `observer(method, path_template, status, seconds)` after every Stripe HTTP
    request of this process (metrics, the benchmark). It must be quick and thread-safe."""
    _observers.append(observer)


def _notify_observers(method: str, path: str, status: int | None, seconds: float) -> None:
    for observer in tuple(_observers):
        try:
            observer(method, path, status, seconds)
        except Exception:  # an observer must never fail a payment, nor silence the others
            logger.exception("Stripe request observer failed")


def build_limiter(settings: Settings, api_key: str) -> Limiter:
    """The account's shared limiter in Redis, or a per-process one when there is no Redis."""
    pace = Pace(
        rate=settings.stripe_rate_limit,
        burst=settings.stripe_burst,
        max_wait=settings.rate_limit_wait_cap,
        penalty_seconds=settings.rate_limit_penalty_seconds,
    )
    url = settings.rate_limit_redis
    if url is None:
        return LocalLimiter(pace)
    return RedisLimiter(pace, url, bucket_for(api_key))


def tasks_per_process() -> int:
    """Tasks one process runs at once: the worker's concurrency under a thread or gevent
    pool, 1 under prefork (and outside a worker)."""
    return _tasks_per_process if _tasks_per_process is not None else 1


def db_pool_size(settings: Settings) -> int:
    """Pooled connections per process: PAYWORKER_DB_POOL_SIZE, else one per concurrent task
    (at most 16) plus spares. Threads beyond that wait for a connection, never holding one
    across a Stripe call."""
    if settings.db_pool_size:
        return settings.db_pool_size
    return min(tasks_per_process(), _MAX_TASK_CONNECTIONS) + _SPARE_CONNECTIONS


@signals.worker_init.connect
def _note_execution_model(sender: Any = None, **_: Any) -> None:
    global _tasks_per_process
    pool_cls = concurrency.get_implementation(sender.pool_cls)
    if pool_cls.__module__ == "celery.concurrency.gevent" and not _gevent_patched():
        logger.critical(
            "the gevent pool needs `-P gevent` on the command line: Celery monkey-patches the"
            " standard library only then; unpatched, every database and Stripe call blocks"
            " all tasks of this process"
        )
    shared = pool_cls.__module__ in _SHARED_POOLS
    count = sender.concurrency if isinstance(sender.concurrency, int) else os.cpu_count() or 1
    _tasks_per_process = count if shared else 1
    settings = get_settings()
    if settings.rate_limit_redis is None:
        logger.warning(
            "NO SHARED STRIPE RATE LIMIT: the broker is not Redis and"
            " PAYWORKER_RATE_LIMIT_REDIS_URL is unset, so each worker process limits itself"
            " to %.1f requests/s; N processes may send N times that. Set"
            " PAYWORKER_RATE_LIMIT_REDIS_URL to share one limit.",
            settings.stripe_rate_limit,
        )


def _gevent_patched() -> bool:
    monkey = sys.modules.get("gevent.monkey")
    return bool(monkey is not None and monkey.is_module_patched("socket"))


@signals.task_prerun.connect
def _start_run_clock(task: Any = None, **_: Any) -> None:
    soft = getattr(task, "soft_time_limit", None) or task.app.conf.task_soft_time_limit
    set_run_deadline(time.monotonic() + soft if soft else None)


@signals.task_postrun.connect
def _stop_run_clock(**_: Any) -> None:
    set_run_deadline(None)
