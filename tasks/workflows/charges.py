"""charge_requested: validate, record a pending charge, charge once, record the outcome."""

from __future__ import annotations

import enum

from db.models import Charge, ChargeStatus
from tasks.context import Context, card_of, customer_of, default_card_of
from tasks.errors import CardDeclined, PermanentError, StripeNotFound
from tasks.ledger import STARTED
from tasks.messages import ChargeRequested
from tasks.money import check_charge_amount


class Point(enum.StrEnum):
    STARTED = STARTED
    # A pending charges row exists and the charge may have reached Stripe: repeat the
    # create with the same key; Stripe's replay tells what happened.
    CHARGING = "charge_creating"


def charge_requested(ctx: Context, msg: ChargeRequested) -> None:
    """Charge the named (or default) card of the user exactly once."""
    check_charge_amount(msg.amount, msg.currency)
    if ctx.point != Point.CHARGING:
        with ctx.tx() as session:
            customer = customer_of(session, msg.user_id)
            if msg.card_id is not None:
                card = card_of(session, msg.user_id, msg.card_id)
            else:
                card = default_card_of(session, msg.user_id)
            session.add(
                Charge(
                    event_id=msg.event_id,
                    user_id=msg.user_id,
                    amount=msg.amount,
                    currency=msg.currency,
                    stripe_card_id=card.stripe_card_id,
                    status=ChargeStatus.PENDING,
                )
            )
            ctx.begin_write(
                session,
                Point.CHARGING,
                customer_id=customer.stripe_customer_id,
                card_id=card.stripe_card_id,
            )
    card_id = ctx.progress["card_id"]
    customer_id = ctx.progress["customer_id"]
    try:
        outcome = None
        if ctx.key_may_have_expired():
            outcome = ctx.gateway.find_charge(customer_id=customer_id, event_id=msg.event_id)
        outcome = outcome or ctx.gateway.create_charge(
            ctx.key("charge"),
            customer_id=customer_id,
            card_id=card_id,
            amount=msg.amount,
            currency=msg.currency,
            description=msg.description,
            metadata=msg.stripe_metadata(msg.metadata),
        )
    except CardDeclined as declined:
        _record_failure(ctx, msg, declined, declined.decline_code, declined.charge_id)
        return
    except StripeNotFound as missing:
        _record_failure(ctx, msg, PermanentError(missing.message, code="card_not_found"))
        return
    except PermanentError as error:
        _record_failure(ctx, msg, error)
        return
    result = {
        "charge_id": outcome.charge_id,
        "amount": msg.amount,
        "currency": msg.currency,
        "card_id": card_id,
        "status": outcome.status,
    }
    with ctx.tx() as session:
        charge = session.get(Charge, msg.event_id, with_for_update=True)
        assert charge is not None
        charge.stripe_charge_id = outcome.charge_id
        if outcome.status == "failed":
            charge.status = ChargeStatus.FAILED
            charge.failure_code = outcome.failure_code or "card_declined"
            charge.decline_code = outcome.decline_code
            charge.failure_message = outcome.failure_message
            refused = PermanentError(
                outcome.failure_message or "card declined", code="card_declined"
            )
            ctx.fail(session, refused, {**result, "decline_code": outcome.decline_code})
        else:
            charge.status = ChargeStatus.SUCCEEDED
            ctx.succeed(session, result)


def _record_failure(
    ctx: Context,
    msg: ChargeRequested,
    error: PermanentError,
    decline_code: str | None = None,
    charge_id: str | None = None,
) -> None:
    failure_code = error.failure_code if isinstance(error, CardDeclined) else error.code
    with ctx.tx() as session:
        charge = session.get(Charge, msg.event_id, with_for_update=True)
        assert charge is not None
        charge.status = ChargeStatus.FAILED
        charge.stripe_charge_id = charge_id
        charge.failure_code = failure_code
        charge.decline_code = decline_code
        charge.failure_message = error.message
        result = {
            "decline_code": decline_code,
            "failure_code": failure_code,
            "charge_id": charge_id,
        }
        ctx.fail(session, error, result)
