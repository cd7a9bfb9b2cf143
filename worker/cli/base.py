"""What the command modules share: where they write, and payworker's Celery app."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console

if TYPE_CHECKING:
    from celery import Celery

console = Console()  # results
errors = Console(stderr=True)  # refusals and failures


def celery_app() -> Celery:
    """payworker's Celery app, for a command that publishes or starts a Celery process."""
    # Imported here, never at the top of a command module (and so of the CLI): building
    # the app imports prometheus_client (through worker.metrics), which settles on single-
    # or multiprocess metrics once, at import, and `payworker worker` must set
    # PROMETHEUS_MULTIPROC_DIR before that (running.share_metrics). Importing it opens no
    # connection; it costs 10 ms once the task modules are loaded. (While worker/__init__.py
    # imports the app, `import worker.cli` builds it first anyway, and too early for that.)
    from worker.app import app

    return app
