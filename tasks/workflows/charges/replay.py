"""What `payworker replay --force` asks of a failed charge: where its new generation
starts, and whether Stripe already holds a payment of the event (then it must not)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine

from db import charges, users
from db.models import ChargeStatus
from db.replays import EventRow
from tasks.gateway import StripeGateway
from tasks.phases import Regeneration
from tasks.workflows.charges.start import PAYMENT_INTENTS, ChargeProgress, Point

# A charges row in these may be charged again by a new generation.
REPLAYABLE = (ChargeStatus.FAILED, ChargeStatus.CANCELED)


def regenerate(conn: Connection, event: EventRow) -> Regeneration | str:
    """A new generation of a failed charge repeats the charge of the same card and customer
    through the same API, from its create, under the new key. Its charges row (keyed by the
    event) goes back to `pending`; its old outcome moves to the replay history."""
    charge = charges.locked(conn, event.event_id)
    if charge is None:
        return Regeneration(Point.STARTED, ChargeProgress())
    if charge.status not in REPLAYABLE:
        return f"its charges row is {charge.status}, not failed: look at it before replaying"
    earlier = ChargeProgress.model_validate(event.progress)
    if earlier.customer_id is None:
        return "no customer recorded for its charge; publish a new charge_requested"
    card = users.card(conn, charge.stripe_card_id)
    if card is None or card.user_id != event.user_id or card.removed_at is not None:
        return (
            f"the charged card {charge.stripe_card_id} is no longer an active card of the"
            " user; publish a new charge_requested under a new event_id"
        )
    charges.reset_to_pending(conn, event.event_id)
    old: dict[str, Any] = {
        "stripe_charge_id": charge.stripe_charge_id,
        "status": charge.status,
        "stripe_card_id": charge.stripe_card_id,
        "failure_code": charge.failure_code,
        "decline_code": charge.decline_code,
        "failure_message": charge.failure_message,
    }
    if charge.payment_intent_id is not None:
        old["payment_intent_id"] = charge.payment_intent_id
    intents = earlier.api == PAYMENT_INTENTS
    progress = ChargeProgress(
        customer_id=earlier.customer_id, card_id=charge.stripe_card_id, api=earlier.api
    )
    point = Point.INTENT_CREATING if intents else Point.CHARGING
    return Regeneration(point, progress, {"charge": old})


def charged_on_stripe(gateway: StripeGateway, engine: Engine, event: EventRow) -> str | None:
    """Before a new generation: a succeeded charge (or PaymentIntent) of this event on
    Stripe, of any generation, refuses it (the ledger says failed, yet the customer paid: a
    lost outcome to look into, not a charge to repeat)."""
    progress = ChargeProgress.model_validate(event.progress)
    customer_id = progress.customer_id
    if customer_id is None and event.user_id is not None:
        with engine.connect() as conn:
            customer_id = users.customer_id(conn, event.user_id)
    if customer_id is None:
        return None  # the user has no customer: nothing can have been charged
    if progress.api == PAYMENT_INTENTS:
        intent = gateway.find_payment_intent(
            customer_id=customer_id, event_id=event.event_id, succeeded=True
        )
        if intent is None:
            return None
        return (
            f"Stripe holds a succeeded PaymentIntent of this event, {intent.intent_id}: a new"
            " generation would charge the customer twice; look at it on Stripe"
        )
    found = gateway.find_charge(customer_id=customer_id, event_id=event.event_id, succeeded=True)
    if found is None:
        return None
    return (
        f"Stripe holds a succeeded charge of this event, {found.charge_id}: a new generation"
        " would charge the customer twice; look at that charge on Stripe"
    )
