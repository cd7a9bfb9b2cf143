"""The Celery application. Importing it opens no connection."""

from __future__ import annotations

from celery import Celery

app = Celery("payworker")
app.config_from_object("celeryconfig")

import worker.bootstrap  # noqa: E402,F401  (connects the start-up signal handlers)
