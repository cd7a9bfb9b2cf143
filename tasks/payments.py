"""The five Celery tasks of the public contract, thin wrappers over the workflows."""

from __future__ import annotations

from typing import Any

from tasks.base import PaymentTask, Workflow
from tasks.workflows.cards import card_removed, card_token_received, default_card_changed
from tasks.workflows.charges import charge_requested
from tasks.workflows.customers import user_registered
from worker.app import app

WORKFLOWS: dict[str, Workflow] = {
    "user_registered": user_registered,
    "card_token_received": card_token_received,
    "default_card_changed": default_card_changed,
    "card_removed": card_removed,
    "charge_requested": charge_requested,
}


def _register(message_type: str, workflow: Workflow) -> PaymentTask:
    # `self` is positional-only so a message with a kwarg named "self" is rejected as
    # invalid instead of crashing the call.
    def run(self: PaymentTask, /, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.handle(args, kwargs)

    run.__name__ = message_type
    task: PaymentTask = app.task(
        name=f"payments.{message_type}",
        bind=True,
        base=PaymentTask,
        message_type=message_type,
        workflow=staticmethod(workflow),
    )(run)
    return task


TASKS = {name: _register(name, workflow) for name, workflow in WORKFLOWS.items()}
