"""user_registered: one Stripe customer per user, ever."""

from __future__ import annotations

import enum

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Customer, EventStatus, PaymentEvent
from tasks.context import Context, lock_user
from tasks.errors import PrerequisiteMissing
from tasks.ledger import STARTED
from tasks.messages import UserRegistered


class Point(enum.StrEnum):
    STARTED = STARTED
    # The create call may have reached Stripe: resume by repeating it with the same key.
    CREATING = "customer_creating"


def user_registered(ctx: Context, msg: UserRegistered) -> None:
    """Create the user's Stripe customer, or adopt the one that exists."""
    if ctx.point != Point.CREATING:
        with ctx.tx() as session:
            lock_user(session, msg.user_id)
            existing = session.get(Customer, msg.user_id)
            if existing is not None:
                ctx.succeed(session, {"customer_id": existing.stripe_customer_id, "existing": True})
                return
            _wait_for_other_creation(session, msg)
            ctx.begin_write(session, Point.CREATING)

    customer_id = None
    if ctx.key_may_have_expired():
        customer_id = ctx.gateway.find_customer(email=msg.email, event_id=msg.event_id)
    if customer_id is None:
        customer_id = ctx.gateway.create_customer(
            ctx.key("customer"),
            email=msg.email,
            name=msg.name,
            metadata=msg.stripe_metadata(msg.metadata),
        )
    with ctx.tx() as session:
        session.add(
            Customer(
                user_id=msg.user_id,
                stripe_customer_id=customer_id,
                email=msg.email,
                name=msg.name,
                event_id=msg.event_id,
            )
        )
        ctx.succeed(session, {"customer_id": customer_id, "existing": False})


def _wait_for_other_creation(session: Session, msg: UserRegistered) -> None:
    """A second user_registered of a user whose customer is being created waits for it,
    so two events can never create two customers."""
    other = session.scalar(
        select(PaymentEvent.event_id).where(
            PaymentEvent.type == "user_registered",
            PaymentEvent.user_id == msg.user_id,
            PaymentEvent.event_id != msg.event_id,
            PaymentEvent.recovery_point == Point.CREATING,
            PaymentEvent.status.in_([EventStatus.RECEIVED, EventStatus.PROCESSING]),
        )
    )
    if other is not None:
        raise PrerequisiteMissing(
            f"event {other!r} is creating this user's customer", code="customer_not_found"
        )
