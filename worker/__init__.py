"""payworker's entry points: the Celery app, start-up hooks, CLI, demo, Flower, metrics.

`celery -A worker worker -Q payments` finds the app here. It is built on first access, not
when the package is imported: `payworker worker` must set PROMETHEUS_MULTIPROC_DIR before
prometheus_client is first imported (by the app's metrics), and `payworker --help` need not
build an app at all."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["app"]


def __getattr__(name: str) -> Any:
    if name == "app":
        instance = importlib.import_module("worker.app").app
        globals()["app"] = instance  # the instance, not the submodule, from now on
        return instance
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
