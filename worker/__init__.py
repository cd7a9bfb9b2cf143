"""payworker's Celery app, settings, process bootstrapping and CLI.

`celery -A worker worker -Q payments` finds the app here."""

from worker.app import app

__all__ = ["app"]
