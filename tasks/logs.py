"""Log lines of a task run: `message key=value …`, always redacted."""

from __future__ import annotations

import logging
from typing import Any

from tasks.redact import redact

logger = logging.getLogger("payworker")


class RedactingFilter(logging.Filter):
    """Last line of defence: mask tokens and keys in any record, ours or a library's."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # a malformed record is the library's bug; do not drop it
            return True
        record.msg, record.args = redact(text), None
        # Render the traceback now, so the handler prints our redacted copy: a traceback
        # can quote a task's arguments.
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def install_redaction() -> None:
    """Attach the redacting filter to every handler of the root logger."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


class EventLog:
    """A logger with fields (event_id, task_id, …) bound to every line it writes."""

    def __init__(self, **fields: Any) -> None:
        self.fields = fields

    def bind(self, **fields: Any) -> EventLog:
        return EventLog(**{**self.fields, **fields})

    def log(self, level: int, message: str, **fields: Any) -> None:
        merged = {**self.fields, **fields}
        rendered = " ".join(f"{key}={value}" for key, value in merged.items() if value is not None)
        logger.log(level, redact(f"{message} {rendered}".rstrip()))

    def info(self, message: str, **fields: Any) -> None:
        self.log(logging.INFO, message, **fields)

    def warning(self, message: str, **fields: Any) -> None:
        self.log(logging.WARNING, message, **fields)

    def error(self, message: str, **fields: Any) -> None:
        self.log(logging.ERROR, message, **fields)

    def critical(self, message: str, **fields: Any) -> None:
        self.log(logging.CRITICAL, message, **fields)
