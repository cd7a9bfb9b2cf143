"""The Charges API (PAYWORKER_CHARGE_API=charges): one Charge of the card, as payworker
has always made it.

charge_creating ──(Stripe: create the charge)──> succeeded | failed
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from core.errors import CardDeclined
from db import charges
from db.models import ChargeStatus
from tasks.gateway import ChargeOutcome
from tasks.phases import Fail, Step, Succeed
from tasks.workflows.charges.start import ChargeRun, Declined, charge_once


def charge(run: ChargeRun) -> ChargeOutcome | Declined:
    """Create the charge (or, after Stripe forgot the key, find the one we made)."""
    msg, progress = run.message, run.progress
    customer_id, card_id = progress.customer_id, progress.card_id
    assert customer_id is not None and card_id is not None
    return charge_once(
        run,
        lambda: run.gateway.find_charge(
            customer_id=customer_id, event_id=msg.event_id, generation=run.lookup_generation
        ),
        lambda: run.gateway.create_charge(
            run.key("charge"),
            customer_id=customer_id,
            card_id=card_id,
            amount=msg.amount,
            currency=msg.currency,
            description=msg.description,
            metadata=run.metadata(msg.metadata),
        ),
    )


def record_outcome(run: ChargeRun, conn: Connection, outcome: ChargeOutcome | Declined) -> Step:
    if isinstance(outcome, Declined):
        return Fail(outcome.error)
    msg = run.message
    result: dict[str, Any] = {
        "charge_id": outcome.charge_id,
        "amount": msg.amount,
        "currency": msg.currency,
        "card_id": run.progress.card_id,
        "status": outcome.status,
    }
    if outcome.status == "failed":
        refused = CardDeclined(
            outcome.failure_message or "card declined",
            decline_code=outcome.decline_code,
            failure_code=outcome.failure_code or "card_declined",
            charge_id=outcome.charge_id,
        )
        return Fail(refused, {**result, "decline_code": outcome.decline_code})
    charges.record_outcome(conn, msg.event_id, ChargeStatus.SUCCEEDED, charge_id=outcome.charge_id)
    return Succeed(result)
