"""setup_requested: a SetupIntent for the user's customer, whose client secret the app's
stripe.js needs to collect a card (`confirmCardSetup`); the app then sends the resulting
PaymentMethod in a payment_method_received.

    started ──(customer known)──> setup_creating ──(Stripe: create)──> succeeded

The client secret goes into the event's result, for the app alone: never into progress,
logs, the task's return value or an error.
"""

from __future__ import annotations

import enum

from sqlalchemy import Connection

from db import users
from db.ledger import STARTED
from tasks.gateway import SetupOutcome
from tasks.messages import SetupRequested
from tasks.phases import Advance, Phase, Progress, Run, Step, Succeed, Workflow


class Point(enum.StrEnum):
    STARTED = STARTED
    # The create may have reached Stripe: repeat it with the same key (or, after the key
    # expired, find it by its metadata) before anything else.
    CREATING = "setup_creating"


class SetupProgress(Progress):
    customer_id: str | None = None


SetupRun = Run[SetupRequested, SetupProgress]


def _check_customer(run: SetupRun, conn: Connection, _: None) -> Step:
    """Raises PrerequisiteMissing (`customer_not_found`) until the user is registered."""
    customer_id = users.customer_of(conn, run.message.user_id)
    return Advance(Point.CREATING, SetupProgress(customer_id=customer_id), starts_write=True)


def _create(run: SetupRun) -> SetupOutcome:
    customer_id = str(run.progress.customer_id)
    return run.resume_write(
        lambda: run.gateway.find_setup_intent(
            customer_id=customer_id, event_id=run.message.event_id, generation=run.lookup_generation
        ),
        lambda: run.gateway.create_setup_intent(
            run.key("setup"),
            customer_id=customer_id,
            usage=run.message.usage,
            metadata=run.metadata(),
        ),
    )


def _succeed(_run: SetupRun, _conn: Connection, setup: SetupOutcome) -> Step:
    return Succeed({"setup_intent_id": setup.setup_intent_id, "client_secret": setup.client_secret})


WORKFLOW: Workflow[SetupRequested, SetupProgress] = Workflow(
    message_type="setup_requested",
    progress=SetupProgress,
    phases={
        Point.STARTED: Phase(commit=_check_customer),
        Point.CREATING: Phase(call=_create, commit=_succeed),
    },
)
