"""user_registered: one Stripe customer per user, ever.

started ──(no customer yet)──> customer_creating ──(Stripe: create)──> succeeded
"""

from __future__ import annotations

import enum

from sqlalchemy import Connection, select

from core.errors import PrerequisiteMissing
from db import users
from db.ledger import STARTED
from db.ledger_sql import EVENTS
from db.models import EventStatus
from tasks.messages import UserRegistered
from tasks.phases import Advance, Phase, Progress, Run, Step, Succeed, Workflow


class Point(enum.StrEnum):
    STARTED = STARTED
    # The create call may have reached Stripe: resume by repeating it with the same key.
    CREATING = "customer_creating"


CustomerRun = Run[UserRegistered, Progress]


def _decide(run: CustomerRun, conn: Connection, _: None) -> Step:
    """Adopt the user's customer if it exists, else go and create it."""
    msg = run.message
    users.lock_user(conn, msg.user_id)
    existing = users.customer_id(conn, msg.user_id)
    if existing is not None:
        return Succeed({"customer_id": existing, "existing": True})
    _wait_for_other_creation(conn, msg)
    return Advance(Point.CREATING, run.progress, starts_write=True)


def _wait_for_other_creation(conn: Connection, msg: UserRegistered) -> None:
    """A second user_registered of a user whose customer is being created waits for it,
    so two events can never create two customers. A creator that died at that point
    (`dead`) blocks too: its create may have reached Stripe, and only its replay (same
    key) can tell."""
    other = conn.execute(
        select(EVENTS.c.event_id, EVENTS.c.status).where(
            EVENTS.c.type == "user_registered",
            EVENTS.c.user_id == msg.user_id,
            EVENTS.c.event_id != msg.event_id,
            EVENTS.c.recovery_point == Point.CREATING,
            EVENTS.c.status.in_([EventStatus.RECEIVED, EventStatus.PROCESSING, EventStatus.DEAD]),
        )
    ).first()
    if other is None:
        return
    if other.status == EventStatus.DEAD:
        raise PrerequisiteMissing(
            f"event {other.event_id!r} died creating this user's customer; replay it"
            " (`payworker replay`) before registering the user again",
            code="customer_not_found",
        )
    raise PrerequisiteMissing(
        f"event {other.event_id!r} is creating this user's customer", code="customer_not_found"
    )


def _create(run: CustomerRun) -> tuple[str, bool]:
    """The customer, and whether it existed already: one recorded for the user while this
    event waited (it is adopted, never doubled), or created now (or found, after Stripe
    forgot our key) under this event's key."""
    msg = run.message
    with run.reading() as conn:
        existing = users.customer_id(conn, msg.user_id)
    if existing is not None:
        return existing, True
    created = run.resume_write(
        lambda: run.gateway.find_customer(
            email=msg.email, event_id=msg.event_id, generation=run.lookup_generation
        ),
        lambda: run.gateway.create_customer(
            run.key("customer"), email=msg.email, name=msg.name, metadata=run.metadata(msg.metadata)
        ),
    )
    return created, False


def _record(run: CustomerRun, conn: Connection, outcome: tuple[str, bool]) -> Step:
    msg = run.message
    customer_id, existed = outcome
    if existed:
        return Succeed({"customer_id": customer_id, "existing": True})
    users.add_customer(
        conn,
        user_id=msg.user_id,
        stripe_customer_id=customer_id,
        email=msg.email,
        name=msg.name,
        event_id=msg.event_id,
    )
    return Succeed({"customer_id": customer_id, "existing": False})


WORKFLOW: Workflow[UserRegistered, Progress] = Workflow(
    message_type="user_registered",
    progress=Progress,
    phases={
        Point.STARTED: Phase(commit=_decide),
        Point.CREATING: Phase(call=_create, commit=_record),
    },
)
