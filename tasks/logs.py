"""Structured, redacted logs. Every line a task writes (ours, Celery's, the Stripe SDK's)
carries the task's bound fields (event_id, task_id, user_id, attempt): JSON lines for log
shippers, or a readable console format on a terminal."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from core.errors import clip
from core.redact import redact

_NAME = "payworker"

# Characters a terminal or a log viewer acts on rather than shows: C0 and C1 controls (ESC
# starts a terminal escape sequence) and the invisible format characters, bidi overrides
# included, that reorder or hide text. A message's ids and texts reach log lines.
_CONTROLS = "\x00-\x08\x0b-\x1f\x7f-\x9f"
_INVISIBLE = "\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff"
_UNPRINTABLE = re.compile(f"[\t\n{_CONTROLS}{_INVISIBLE}]")
# A traceback keeps its line breaks and indentation.
_UNPRINTABLE_IN_TRACEBACK = re.compile(f"[{_CONTROLS}{_INVISIBLE}]")


def printable(text: str, *, traceback: bool = False) -> str:
    """`text` with unprintable characters written as escapes (`\\x1b`, `\\u202e`)."""
    pattern = _UNPRINTABLE_IN_TRACEBACK if traceback else _UNPRINTABLE
    return pattern.sub(lambda m: m.group(0).encode("unicode_escape").decode("ascii"), text)


def log_text(text: str, *, traceback: bool = False) -> str:
    """What a log line shows of `text`: redacted, printable, at most MAX_ERROR_TEXT bytes (of
    a traceback, its end: the error)."""
    return clip(printable(redact(text), traceback=traceback), keep_end=traceback)


def _redact_values(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = log_text(value, traceback=key == "exception")
    return event


class RedactingFilter(logging.Filter):
    """Last line of defence: mask tokens and keys in any record, ours or a library's, and
    bound it (MAX_ERROR_TEXT bytes of message, and of traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, dict):
            return True  # a structlog event: its values are redacted by the formatter
        try:
            text = record.getMessage()
        except Exception:  # a malformed record is the library's bug; do not drop it
            return True
        record.msg, record.args = log_text(text), None
        # Render the traceback now, so the handler prints our redacted copy: a traceback
        # can quote a task's arguments.
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = log_text(record.exc_text, traceback=True)
        if record.stack_info:
            record.stack_info = log_text(record.stack_info, traceback=True)
        return True


def _exc_text(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    record = event.get("_record")
    if isinstance(record, logging.LogRecord) and record.exc_text:
        event["exception"] = record.exc_text
    return event


def configure(fmt: str = "auto", level: int | str = logging.INFO) -> None:
    """Route every logger through structlog's formatter: JSON, or console on a terminal."""
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _exc_text,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _redact_values,
            renderer,
        ],
    )
    handler = logging.StreamHandler()
    handler.setFormatter(formatter)
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    structlog.configure(
        processors=[*shared[:-1], structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def install_redaction() -> None:
    """Attach the redacting filter to every handler of the root logger."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


def bind_task(**fields: Any) -> None:
    """Bind fields to every log line of the current task (thread or process)."""
    structlog.contextvars.bind_contextvars(**{k: v for k, v in fields.items() if v is not None})


def clear_task() -> None:
    structlog.contextvars.clear_contextvars()


class EventLog:
    """A logger with fields (event_id, task_id, …) bound to every line it writes; the
    fields are also bound to the task's context so library lines carry them."""

    def __init__(self, **fields: Any) -> None:
        self.fields = fields
        bind_task(**fields)

    def bind(self, **fields: Any) -> EventLog:
        return EventLog(**{**self.fields, **fields})

    def log(self, level: int, message: str, **fields: Any) -> None:
        extra = {k: v for k, v in fields.items() if v is not None}
        structlog.get_logger(_NAME).log(level, redact(message), **extra)

    def info(self, message: str, **fields: Any) -> None:
        self.log(logging.INFO, message, **fields)

    def warning(self, message: str, **fields: Any) -> None:
        self.log(logging.WARNING, message, **fields)

    def error(self, message: str, **fields: Any) -> None:
        self.log(logging.ERROR, message, **fields)

    def critical(self, message: str, **fields: Any) -> None:
        self.log(logging.CRITICAL, message, **fields)
