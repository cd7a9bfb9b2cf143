"""Worker start-up: refuse unsafe or incomplete configuration, learn the execution model,
reset per-process state after the fork, and take part in the queue's periodic duties once
ready. `install` connects the hooks for one app."""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

from celery import Celery, concurrency, signals

from core.errors import UnsafeConfiguration
from core.redact import register_secret
from core.settings import get_settings
from db.session import dispose_all
from tasks.logs import bind_task, clear_task, configure, install_redaction
from tasks.maintenance import periodic_duties
from tasks.resources import ProcessResources
from tasks.stripe_http import set_run_deadline
from worker.leader import Leader

logger = logging.getLogger("payworker")

# Pools that run many tasks in one process; prefork and solo run one per process.
_SHARED_POOLS = (
    "celery.concurrency.thread",
    "celery.concurrency.gevent",
    "celery.concurrency.eventlet",
)


def check_worker_config(conf: Any) -> list[str]:
    """Problems that must stop a worker from starting; empty when it may start."""
    settings = get_settings()
    problems = []
    if settings.stripe_api_key is None:
        problems.append("STRIPE_API_KEY is not set")
    problems.extend(settings.seal_key_problems())
    if not conf.task_acks_late:
        problems.append("task_acks_late is off: a crashed worker would lose its message")
    if not conf.task_reject_on_worker_lost:
        problems.append("task_reject_on_worker_lost is off: a killed worker's message is acked")
    if conf.task_always_eager:
        problems.append("task_always_eager is on: nothing would go through the broker")
    if (conf.worker_prefetch_multiplier or 0) > 1:
        problems.append("worker_prefetch_multiplier above 1 holds messages hostage")
    problems.extend(settings.unsafe_reasons())
    return sorted(set(problems))


def install(app: Celery, resources: ProcessResources) -> None:
    """Connect the start-up and per-task hooks of payworker's worker for `app`."""

    def refuse_unsafe_start(sender: Any = None, **_: Any) -> None:
        if sender is None or sender.app is not app:
            return
        install_redaction()
        settings = get_settings()
        if settings.stripe_api_key is not None:
            register_secret(settings.stripe_api_key.get_secret_value())
        for secret in settings.seal_secrets:
            register_secret(secret)
        problems = check_worker_config(app.conf)
        if problems:
            for problem in problems:
                logger.critical("refusing to start: %s", problem)
            raise UnsafeConfiguration("payworker refuses to start: " + "; ".join(problems))
        resources.tasks_per_process = _note_execution_model(sender)

    def announce_authentication(sender: Any = None, **_: Any) -> None:
        # At worker_ready, not worker_init: by then the log lines are ours, with a level.
        if sender is not None and sender.app is app:
            _announce_authentication()

    signals.worker_init.connect(refuse_unsafe_start, weak=False)
    _take_part_in_duties(app, resources)
    signals.worker_ready.connect(announce_authentication, weak=False)
    signals.worker_process_init.connect(_after_fork, weak=False)
    signals.setup_logging.connect(_setup_logging, weak=False)
    signals.task_prerun.connect(_before_task, weak=False)
    signals.task_postrun.connect(_after_task, weak=False)


def _take_part_in_duties(app: Celery, resources: ProcessResources) -> None:
    """Every worker of `app`, once ready, runs a leader thread in its main process
    (worker/leader.py); the one that leads its queue sweeps. Stopped at shutdown."""
    leaders: list[Leader] = []

    def lead(sender: Any = None, **_: Any) -> None:
        if sender is None or sender.app is not app or leaders:
            return
        settings = get_settings()
        identity = f"{sender.hostname}:{os.getpid()}"
        leader = Leader(settings, identity, periodic_duties(app, settings, resources.telemetry))
        leaders.append(leader)
        leader.start()

    def resign(sender: Any = None, **_: Any) -> None:
        if sender is None or sender.app is not app:
            return
        while leaders:
            leaders.pop().stop()

    signals.worker_ready.connect(lead, weak=False)
    signals.worker_shutdown.connect(resign, weak=False)


def _announce_authentication() -> None:
    """Say at start whether this worker runs only authenticated messages."""
    ring = get_settings().message_keyring
    if ring is None:
        logger.warning(
            "MESSAGES ARE NOT AUTHENTICATED: PAYWORKER_MESSAGE_KEYS is unset, so any client"
            " that can publish to the broker can make this worker act on Stripe. Set it in"
            " production (docs/operations.md, production checklist)."
        )
    else:
        logger.info(
            "messages are authenticated: unsigned or wrongly signed ones are refused;"
            " signing key %s, verifying keys %s",
            ring.signer.key_id,
            ", ".join(ring.key_ids),
        )


def _note_execution_model(worker: Any) -> int:
    """Tasks one process of this worker runs at once: its concurrency under a thread or
    gevent pool, 1 under prefork. Warns about set-ups that defeat the limits."""
    pool_cls = concurrency.get_implementation(worker.pool_cls)
    if pool_cls.__module__ == "celery.concurrency.gevent" and not _gevent_patched():
        logger.critical(
            "the gevent pool needs `-P gevent` on the command line: Celery monkey-patches the"
            " standard library only then; unpatched, every database and Stripe call blocks"
            " all tasks of this process"
        )
    settings = get_settings()
    if settings.rate_limit_redis is None:
        logger.warning(
            "NO SHARED STRIPE RATE LIMIT: the broker is not Redis and"
            " PAYWORKER_RATE_LIMIT_REDIS_URL is unset, so each worker process limits itself"
            " to %.1f requests/s; N processes may send N times that. Set"
            " PAYWORKER_RATE_LIMIT_REDIS_URL to share one limit.",
            settings.stripe_rate_limit,
        )
    if pool_cls.__module__ not in _SHARED_POOLS:
        return 1
    count = worker.concurrency
    return count if isinstance(count, int) else os.cpu_count() or 1


def _gevent_patched() -> bool:
    monkey = sys.modules.get("gevent.monkey")
    return bool(monkey is not None and monkey.is_module_patched("socket"))


def _after_fork(**_: Any) -> None:
    dispose_all()  # pooled connections inherited from the parent must not be shared
    install_redaction()


def _setup_logging(loglevel: Any = None, **_: Any) -> None:
    # Connecting here replaces Celery's own logging set-up with ours (structured, redacted).
    configure(get_settings().log_format, loglevel or logging.INFO)


def _before_task(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    # Fields of the previous task of this thread are dropped here, not after it, so that
    # Celery's own "succeeded in …" line still carries them.
    clear_task()
    bind_task(task_id=task_id, task=getattr(task, "name", None))
    # The run's deadline, checked before every Stripe request (the thread pool cannot
    # interrupt a task: see tasks/stripe_http.py).
    soft = getattr(task, "soft_time_limit", None) or (
        task.app.conf.task_soft_time_limit if task else None
    )
    set_run_deadline(time.monotonic() + soft if soft else None)


def _after_task(**_: Any) -> None:
    set_run_deadline(None)
