"""Authenticated messages, the worker's side. With PAYWORKER_MESSAGE_KEYS set, a message
whose signature (core/signing.py) is missing or wrong is refused before it is parsed or
claimed: one log line naming the task, the reason and a masked event id (nothing else the
message carried), a metric, and one more in today's count in `payworker_refusals`. The
task then fails, so the message is acked and dropped: it can never become valid, and
nothing an unauthenticated sender wrote is kept."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from core.errors import MessageRefused
from core.signing import KeyRing, Refusal
from db.refusals import count_refusal
from tasks.logs import EventLog
from tasks.resources import ProcessResources

# What Flower and `celery inspect` show instead of the arguments of such a message.
HIDDEN = "<hidden: message not authenticated>"
# An event id from an unauthenticated sender is shown cut down to these characters only.
_UNSAFE = re.compile(r"[^A-Za-z0-9_.:-]")


def refusal(
    ring: KeyRing | None, task: str, args: Any, kwargs: Any, signature: object
) -> Refusal | None:
    """Why this message must not run; None when it may (it verifies, or there are no keys)."""
    if ring is None:
        return None
    return ring.verify(task, args, kwargs, signature)


def mask_event_id(kwargs: Any) -> str:
    """The event id a message claims, as `abc…wxyz`: enough to match it with its sender,
    too little to write what an unauthenticated sender chose into our logs."""
    value = kwargs.get("event_id") if isinstance(kwargs, dict) else None
    if not isinstance(value, str) or not value:
        return "-"
    safe = _UNSAFE.sub("?", value)
    return f"{safe[:3]}…{safe[-4:]}" if len(safe) > 8 else f"{safe[:2]}…"


def refuse(resources: ProcessResources, task: str, reason: Refusal, kwargs: Any) -> MessageRefused:
    """Log, count and record one refusal; returns the error that fails the delivery."""
    masked = mask_event_id(kwargs)
    log = EventLog(task=task)
    log.error(
        "MESSAGE REFUSED: not authenticated, dropped",
        reason=reason.value,
        masked_event_id=masked,
    )
    resources.telemetry.message_refused(task, reason.value)
    try:
        with resources.get().engine.begin() as conn:
            count_refusal(conn, reason.value)
    except SQLAlchemyError as exc:  # the log line and the metric still say it
        log.warning("refusal not counted in Postgres", error=type(exc).__name__)
    return MessageRefused(f"not authenticated ({reason.value}); event id {masked}; dropped")
