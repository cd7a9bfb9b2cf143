"""Publishing messages from Python. Upstream apps need none of this: a plain
`app.send_task(name, kwargs={...}, queue="payments")` is the contract (with a
`payworker-signature` header when the workers have PAYWORKER_MESSAGE_KEYS: see
docs/messages.md)."""

from __future__ import annotations

from typing import Any

from celery import Celery

from core.redact import safe_repr
from core.settings import get_settings
from core.signing import KeyRing, signed_headers
from tasks.messages import MESSAGE_TYPES, parse_message


def publish(
    app: Celery,
    message_type: str,
    kwargs: dict[str, Any],
    queue: str,
    *,
    keys: KeyRing | None = None,
) -> str:
    """Validate and publish one message, signed with the first of `keys` (by default
    PAYWORKER_MESSAGE_KEYS) when there are any; returns the Celery task id.

    Raises:
        KeyError: unknown message type.
        InvalidMessage: the message does not validate.
    """
    if message_type not in MESSAGE_TYPES:
        raise KeyError(message_type)
    parse_message(message_type, kwargs)
    name = f"payments.{message_type}"
    ring = keys if keys is not None else get_settings().message_keyring
    result = app.send_task(
        name,
        kwargs=kwargs,
        queue=queue,
        headers=signed_headers(ring, name, kwargs),
        kwargsrepr=safe_repr(kwargs),  # card tokens masked for Flower's task-sent view
    )
    return str(result.id)
