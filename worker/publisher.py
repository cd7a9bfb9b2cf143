"""Publishing messages from Python. Upstream apps need none of this: a plain
`app.send_task(name, kwargs={...}, queue="payments")` is the contract."""

from __future__ import annotations

from typing import Any

from celery import Celery

from core.redact import safe_repr
from tasks.messages import MESSAGE_TYPES, parse_message


def publish(app: Celery, message_type: str, kwargs: dict[str, Any], queue: str) -> str:
    """Validate and publish one message; returns the Celery task id.

    Raises:
        KeyError: unknown message type.
        InvalidMessage: the message does not validate.
    """
    if message_type not in MESSAGE_TYPES:
        raise KeyError(message_type)
    parse_message(message_type, kwargs)
    result = app.send_task(
        f"payments.{message_type}",
        kwargs=kwargs,
        queue=queue,
        kwargsrepr=safe_repr(kwargs),  # card tokens masked for Flower's task-sent view
    )
    return str(result.id)
