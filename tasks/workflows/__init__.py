"""Plain workflows, one per message type. They know nothing of Celery: each is a table of
phases (tasks/phases.py) that the runner drives from the event's recovery point."""

from __future__ import annotations

from typing import Any

from tasks.phases import Workflow
from tasks.workflows.cards import CARD_REMOVED, CARD_TOKEN_RECEIVED, DEFAULT_CARD_CHANGED
from tasks.workflows.charges import WORKFLOW as CHARGE_REQUESTED
from tasks.workflows.customers import WORKFLOW as USER_REGISTERED
from tasks.workflows.payment_methods import WORKFLOW as PAYMENT_METHOD_RECEIVED
from tasks.workflows.refunds import WORKFLOW as REFUND_REQUESTED
from tasks.workflows.setup_intents import WORKFLOW as SETUP_REQUESTED

WORKFLOWS: dict[str, Workflow[Any, Any]] = {
    workflow.message_type: workflow
    for workflow in (
        USER_REGISTERED,
        CARD_TOKEN_RECEIVED,
        DEFAULT_CARD_CHANGED,
        CARD_REMOVED,
        CHARGE_REQUESTED,
        REFUND_REQUESTED,
        PAYMENT_METHOD_RECEIVED,
        SETUP_REQUESTED,
    )
}
