"""Worker start-up: refuse unsafe or incomplete configuration, and reset per-process state
after the fork."""

from __future__ import annotations

import logging
from typing import Any

from celery import signals

from db.session import dispose_all
from tasks.logs import bind_task, clear_task, configure, install_redaction
from tasks.redact import register_secret
from worker import metrics, resources
from worker.settings import get_settings

# Every Stripe HTTP request of this process is counted and timed.
resources.observe_stripe(metrics.observe_stripe)


class UnsafeConfiguration(SystemExit):
    """The worker would lose or double messages with this configuration. A SystemExit,
    because Celery logs and swallows ordinary exceptions raised by signal handlers."""


def check_worker_config(conf: Any) -> list[str]:
    """Problems that must stop a worker from starting; empty when it may start."""
    settings = get_settings()
    problems = []
    if settings.stripe_api_key is None:
        problems.append("STRIPE_API_KEY is not set")
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


@signals.worker_init.connect
def _refuse_unsafe_start(sender: Any = None, **_: Any) -> None:
    install_redaction()
    key = get_settings().stripe_api_key
    if key is not None:
        register_secret(key.get_secret_value())
    problems = check_worker_config(sender.app.conf)
    if problems:
        for problem in problems:
            logging.getLogger("payworker").critical("refusing to start: %s", problem)
        raise UnsafeConfiguration("payworker refuses to start: " + "; ".join(problems))


@signals.worker_process_init.connect
def _after_fork(**_: Any) -> None:
    dispose_all()  # pooled connections inherited from the parent must not be shared
    install_redaction()


@signals.setup_logging.connect
def _setup_logging(loglevel: Any = None, **_: Any) -> None:
    # Connecting here replaces Celery's own logging set-up with ours (structured, redacted).
    configure(get_settings().log_format, loglevel or logging.INFO)


@signals.task_prerun.connect
def _bind_task(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    # Fields of the previous task of this thread are dropped here, not after it, so that
    # Celery's own "succeeded in …" line still carries them.
    clear_task()
    bind_task(task_id=task_id, task=getattr(task, "name", None))
