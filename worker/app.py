"""The Celery application: built here, once, with its tasks, resources and start-up hooks.
Importing it opens no connection (resources are built per process on first use).

`celery -A worker worker -Q payments` finds `app` here."""

from __future__ import annotations

from celery import Celery

from core.settings import get_settings
from tasks.registry import register_tasks
from tasks.resources import ProcessResources
from tasks.telemetry import Telemetry
from worker import bootstrap
from worker.metrics import PrometheusTelemetry


def create_app(telemetry: Telemetry | None = None) -> Celery:
    """payworker's Celery app: celeryconfig's settings, the tasks and the worker hooks."""
    celery = Celery("payworker")
    celery.config_from_object("celeryconfig")
    resources = ProcessResources(get_settings, telemetry or PrometheusTelemetry())
    register_tasks(celery, resources)
    bootstrap.install(celery, resources)
    return celery


app = create_app()
