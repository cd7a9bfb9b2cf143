"""charge_requested: validate, record a pending charge, charge once, record the outcome.

started ──(pending charges row)──> charge_creating ──(Stripe: create)──> succeeded | failed

At `started` the business limits apply too, before anything reaches Stripe: the largest
amount per currency (PAYWORKER_MAX_AMOUNT, `amount_over_limit`) and the most charges per
user in a rolling hour (PAYWORKER_USER_CHARGE_LIMIT, `velocity_limit`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine

from core.errors import CardDeclined, PermanentError, PrerequisiteMissing, StripeNotFound
from core.settings import USER_CHARGE_WINDOW_SECONDS
from db import charges, users
from db.ledger import STARTED
from db.models import ChargeStatus
from db.replays import EventRow
from tasks.gateway import ChargeOutcome, StripeGateway
from tasks.messages import ChargeRequested
from tasks.money import check_charge_amount
from tasks.phases import (
    Advance,
    Fail,
    Phase,
    Progress,
    Regeneration,
    Run,
    Step,
    Succeed,
    Workflow,
)


class Point(enum.StrEnum):
    STARTED = STARTED
    # A pending charges row exists and the charge may have reached Stripe: repeat the
    # create with the same key; Stripe's replay tells what happened.
    CHARGING = "charge_creating"


class ChargeProgress(Progress):
    customer_id: str | None = None
    card_id: str | None = None


ChargeRun = Run[ChargeRequested, ChargeProgress]


def _check_amount(run: ChargeRun) -> None:
    """Stripe's amount rules, then our own ceiling for the currency.

    Raises:
        PermanentError: the money rules' codes (tasks/money.py), or `amount_over_limit`.
    """
    msg = run.message
    check_charge_amount(msg.amount, msg.currency)
    limit = run.settings.max_amount.get(msg.currency)
    if limit is not None and msg.amount > limit:
        raise PermanentError(
            f"amount {msg.amount} is over the {msg.currency.upper()} limit of {limit}"
            " (PAYWORKER_MAX_AMOUNT)",
            code="amount_over_limit",
        )


def _over_velocity_limit(run: ChargeRun, conn: Connection) -> PermanentError | None:
    """`velocity_limit` when the user already has PAYWORKER_USER_CHARGE_LIMIT charges
    (pending or succeeded) from the last hour. Counted under the user's lock, which is held
    until this transaction, and the pending row it writes, commit: a concurrent charge of
    the same user counts after it."""
    limit = run.settings.user_charge_limit
    if limit is None:
        return None
    users.lock_user(conn, run.message.user_id)
    count = charges.recent_count(conn, run.message.user_id, USER_CHARGE_WINDOW_SECONDS)
    if count < limit:
        return None
    return PermanentError(
        f"the user has {count} charges pending or succeeded in the last hour; the limit is"
        f" {limit} (PAYWORKER_USER_CHARGE_LIMIT)",
        code="velocity_limit",
    )


def _record_pending(run: ChargeRun, conn: Connection, _: None) -> Step:
    """Check the user's charge rate, choose the customer and card, and write the pending
    charges row."""
    msg = run.message
    over_limit = _over_velocity_limit(run, conn)
    if over_limit is not None:
        return Fail(over_limit)
    customer_id, card_id = _source(conn, msg)
    charges.add_pending(
        conn,
        event_id=msg.event_id,
        user_id=msg.user_id,
        amount=msg.amount,
        currency=msg.currency,
        card_id=card_id,
    )
    progress = ChargeProgress(customer_id=customer_id, card_id=card_id)
    return Advance(Point.CHARGING, progress, starts_write=True)


def _source(conn: Connection, msg: ChargeRequested) -> tuple[str, str]:
    """The Stripe customer and card to charge.

    Raises:
        PrerequisiteMissing: the user has no customer, or the card is not known yet.
        PermanentError: `card_not_found` when the card is another user's, or removed.
    """
    found = charges.source(conn, msg.user_id, msg.card_id)
    if found is None:
        raise PrerequisiteMissing(
            f"user {msg.user_id!r} has no customer yet (user_registered not processed)",
            code="customer_not_found",
        )
    if found.card_id is None:
        if msg.card_id is None:
            raise PrerequisiteMissing(
                f"user {msg.user_id!r} has no default card yet", code="card_not_found"
            )
        raise PrerequisiteMissing(
            f"card {msg.card_id!r} is not known yet (card_token_received not processed)",
            code="card_not_found",
        )
    if found.card_user_id != msg.user_id:
        raise PermanentError(f"card {msg.card_id!r} does not belong to user", code="card_not_found")
    if found.card_removed_at is not None:
        raise PermanentError(f"card {msg.card_id!r} has been removed", code="card_not_found")
    return found.customer_id, found.card_id


@dataclass(frozen=True)
class _Declined:
    error: CardDeclined


def _charge(run: ChargeRun) -> ChargeOutcome | _Declined:
    """Create the charge (or, after Stripe forgot the key, find the one we made)."""
    msg, progress = run.message, run.progress
    assert progress.customer_id is not None and progress.card_id is not None
    try:
        outcome = None
        if run.key_may_have_expired():
            outcome = run.gateway.find_charge(
                customer_id=progress.customer_id,
                event_id=msg.event_id,
                generation=run.lookup_generation,
            )
        return outcome or run.gateway.create_charge(
            run.key("charge"),
            customer_id=progress.customer_id,
            card_id=progress.card_id,
            amount=msg.amount,
            currency=msg.currency,
            description=msg.description,
            metadata=run.metadata(msg.metadata),
        )
    except CardDeclined as declined:
        return _Declined(declined)
    except StripeNotFound as missing:
        raise PermanentError(missing.message, code="card_not_found") from None


def _record_outcome(run: ChargeRun, conn: Connection, outcome: ChargeOutcome | _Declined) -> Step:
    if isinstance(outcome, _Declined):
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


def _record_failure(run: ChargeRun, conn: Connection, error: PermanentError) -> dict[str, Any]:
    """A failed charge fails its charges row too (when it has one: a charge refused before
    its pending row was written has none)."""
    declined = error if isinstance(error, CardDeclined) else None
    failure_code = declined.failure_code if declined else error.code
    decline_code = declined.decline_code if declined else None
    charge_id = declined.charge_id if declined else None
    charges.record_outcome(
        conn,
        run.message.event_id,
        ChargeStatus.FAILED,
        charge_id=charge_id,
        failure_code=failure_code,
        decline_code=decline_code,
        failure_message=error.message,
    )
    return {"decline_code": decline_code, "failure_code": failure_code, "charge_id": charge_id}


def _regenerate(conn: Connection, event: EventRow) -> Regeneration | str:
    """A new generation of a failed charge repeats the charge of the same card and customer
    from `charge_creating`, under the new key. Its charges row (keyed by the event) goes
    back to `pending`; its old outcome moves to the replay history."""
    charge = charges.locked(conn, event.event_id)
    if charge is None:
        return Regeneration(Point.STARTED, ChargeProgress())
    if charge.status != ChargeStatus.FAILED:
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
    record = {
        "charge": {
            "stripe_charge_id": charge.stripe_charge_id,
            "status": charge.status,
            "stripe_card_id": charge.stripe_card_id,
            "failure_code": charge.failure_code,
            "decline_code": charge.decline_code,
            "failure_message": charge.failure_message,
        }
    }
    progress = ChargeProgress(customer_id=earlier.customer_id, card_id=charge.stripe_card_id)
    return Regeneration(Point.CHARGING, progress, record)


def _charged_on_stripe(gateway: StripeGateway, engine: Engine, event: EventRow) -> str | None:
    """Before a new generation: a succeeded charge of this event on Stripe, of any
    generation, refuses it (the ledger says failed, yet the customer paid: a lost outcome
    to look into, not a charge to repeat)."""
    customer_id = ChargeProgress.model_validate(event.progress).customer_id
    if customer_id is None and event.user_id is not None:
        with engine.connect() as conn:
            customer_id = users.customer_id(conn, event.user_id)
    if customer_id is None:
        return None  # the user has no customer: nothing can have been charged
    found = gateway.find_charge(customer_id=customer_id, event_id=event.event_id, succeeded=True)
    if found is None:
        return None
    return (
        f"Stripe holds a succeeded charge of this event, {found.charge_id}: a new generation"
        " would charge the customer twice; look at that charge on Stripe"
    )


WORKFLOW: Workflow[ChargeRequested, ChargeProgress] = Workflow(
    message_type="charge_requested",
    progress=ChargeProgress,
    phases={
        Point.STARTED: Phase(call=_check_amount, commit=_record_pending),
        Point.CHARGING: Phase(call=_charge, commit=_record_outcome),
    },
    on_failure=_record_failure,
    regenerate=_regenerate,
    check_stripe=_charged_on_stripe,
)
