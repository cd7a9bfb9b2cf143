"""PaymentIntents (PAYWORKER_CHARGE_API=payment_intents): one PaymentIntent, created and
confirmed off-session, watched while it waits for its customer's 3-D Secure.

intent_creating ──(Stripe: create + confirm)──> succeeded | failed
       │ authentication needed, or processing
       v
intent_watching ──(Stripe: read, every PAYWORKER_ACTION_POLL_SECONDS)──> succeeded | failed
       │ older than PAYWORKER_ACTION_EXPIRY_HOURS, still unpaid
       v
intent_canceling ──(Stripe: cancel, "abandoned")──> failed authentication_required
                                                    (or succeeded: paid meanwhile)

While it waits for its customer the event is `action_required` and its result holds what
the app needs to bring the customer back on-session (stripe.js `confirmCardPayment` or
`handleNextAction`): the PaymentIntent's id, client secret and payment method. A final
outcome replaces that result: the client secret never outlives the wait.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection

from core.errors import CardDeclined, PermanentError, StripeInvalidRequest, StripeNotFound
from db import charges
from db.ledger import now
from db.models import ChargeStatus
from tasks.gateway import IntentOutcome
from tasks.phases import Advance, CustomerAction, Fail, Step, Succeed, Watch
from tasks.workflows.charges.start import ChargeProgress, ChargeRun, Declined, Point, charge_once

# Statuses in which the PaymentIntent waits for its customer: a new payment method or
# authentication (requires_payment_method after the off-session 402, or after a failed
# 3-D Secure), the next action, or a confirmation.
WAITING = frozenset({"requires_payment_method", "requires_action", "requires_confirmation"})
# What Stripe's error says when the customer, not the card, is what is missing.
NEEDS_CUSTOMER = frozenset({"authentication_required", "payment_intent_authentication_failure"})
ACTION_MESSAGE = (
    "the card needs the customer's authentication (3-D Secure): confirm the PaymentIntent"
    " on-session with its client secret"
)


def create(run: ChargeRun) -> IntentOutcome | Declined:
    """Create and confirm the PaymentIntent (or, after Stripe forgot the key, find the one
    we made)."""
    msg, progress = run.message, run.progress
    customer_id, card_id = progress.customer_id, progress.card_id
    assert customer_id is not None and card_id is not None
    return charge_once(
        run,
        lambda: run.gateway.find_payment_intent(
            customer_id=customer_id, event_id=msg.event_id, generation=run.lookup_generation
        ),
        lambda: run.gateway.create_payment_intent(
            run.key("payment_intent"),
            customer_id=customer_id,
            payment_method=card_id,
            amount=msg.amount,
            currency=msg.currency,
            description=msg.description,
            metadata=run.metadata(msg.metadata),
        ),
    )


def record_created(run: ChargeRun, conn: Connection, outcome: IntentOutcome | Declined) -> Step:
    if isinstance(outcome, Declined):
        return Fail(outcome.error)
    declined = outcome.status == "requires_payment_method" and outcome.error_code is not None
    if declined and outcome.error_code not in NEEDS_CUSTOMER:
        # Found by its metadata after the key expired: the off-session confirm was declined.
        return Fail(_declined(outcome))
    return _follow(run, conn, outcome)


def read(run: ChargeRun) -> IntentOutcome:
    assert run.progress.intent_id is not None
    return run.gateway.retrieve_payment_intent(run.progress.intent_id)


def record_read(run: ChargeRun, conn: Connection, intent: IntentOutcome) -> Step:
    return _follow(run, conn, intent)


def cancel(run: ChargeRun) -> IntentOutcome:
    """Cancel the abandoned PaymentIntent; when Stripe refuses (it succeeded, or was
    canceled, meanwhile), read what it became."""
    intent_id = run.progress.intent_id
    assert intent_id is not None
    try:
        return run.gateway.cancel_payment_intent(run.key("cancel"), intent_id, "abandoned")
    except StripeNotFound:
        raise
    except StripeInvalidRequest:
        return run.gateway.retrieve_payment_intent(intent_id)


def record_canceled(run: ChargeRun, conn: Connection, intent: IntentOutcome) -> Step:
    if intent.status == "succeeded":
        return _succeeded(run, conn, intent)
    if intent.status == "canceled":
        hours = run.settings.action_expiry_hours
        return Fail(
            PermanentError(
                f"the customer did not authenticate the payment within {hours:g} hours"
                f" (PAYWORKER_ACTION_EXPIRY_HOURS); PaymentIntent {intent.intent_id} was"
                " canceled",
                code="authentication_required",
            )
        )
    # Not canceled, not paid (Stripe answered an earlier state again): read it later.
    return _watch(run, intent, action=None)


def _follow(run: ChargeRun, conn: Connection, intent: IntentOutcome) -> Step:
    """The step a PaymentIntent's status leads to."""
    if intent.status == "succeeded":
        return _succeeded(run, conn, intent)
    if intent.status == "canceled":
        return Fail(
            PermanentError(
                f"PaymentIntent {intent.intent_id} was canceled on Stripe"
                f" ({intent.error_message or 'no reason given'})",
                code="payment_canceled",
            )
        )
    if intent.status in WAITING:
        if _expired(run, intent):
            progress = _with_intent(run.progress, intent)
            return Advance(Point.INTENT_CANCELING, progress, starts_write=True)
        return _await_customer(run, conn, intent)
    return _watch(run, intent, action=None)  # processing: Stripe decides, soon


def _succeeded(run: ChargeRun, conn: Connection, intent: IntentOutcome) -> Step:
    msg = run.message
    charges.record_outcome(
        conn,
        msg.event_id,
        ChargeStatus.SUCCEEDED,
        charge_id=intent.charge_id,
        payment_intent_id=intent.intent_id,
    )
    return Succeed(
        {
            "charge_id": intent.charge_id,
            "payment_intent_id": intent.intent_id,
            "amount": msg.amount,
            "currency": msg.currency,
            "card_id": run.progress.card_id,
            "status": "succeeded",
        }
    )


def _await_customer(run: ChargeRun, conn: Connection, intent: IntentOutcome) -> Step:
    """The charges row waits (`requires_action`), the event shows the app what stripe.js
    needs."""
    charges.record_outcome(
        conn, run.message.event_id, ChargeStatus.REQUIRES_ACTION, payment_intent_id=intent.intent_id
    )
    result: dict[str, Any] = {
        "payment_intent_id": intent.intent_id,
        "client_secret": intent.client_secret,
        "payment_method": run.progress.card_id,
    }
    action = CustomerAction(code="authentication_required", message=ACTION_MESSAGE, result=result)
    return _watch(run, intent, action=action)


def _watch(run: ChargeRun, intent: IntentOutcome, action: CustomerAction | None) -> Watch:
    progress = _with_intent(run.progress, intent)
    if action is not None and progress.action_since is None:
        progress = progress.model_copy(update={"action_since": now()})
    until = now() + timedelta(seconds=run.settings.action_poll_seconds)
    return Watch(Point.INTENT_WATCHING, progress, until, action)


def _with_intent(progress: ChargeProgress, intent: IntentOutcome) -> ChargeProgress:
    return progress.model_copy(update={"intent_id": intent.intent_id})


def _expired(run: ChargeRun, intent: IntentOutcome) -> bool:
    """True when the PaymentIntent (by its `created`, else since the event first waited)
    is older than PAYWORKER_ACTION_EXPIRY_HOURS."""
    since = datetime.fromtimestamp(intent.created, UTC) if intent.created else None
    since = since or run.progress.action_since
    if since is None:
        return False
    return now() - since > timedelta(hours=run.settings.action_expiry_hours)


def _declined(intent: IntentOutcome) -> CardDeclined:
    return CardDeclined(
        intent.error_message or "Your card was declined.",
        decline_code=intent.decline_code,
        failure_code=intent.error_code or "card_declined",
        charge_id=intent.charge_id,
        payment_intent_id=intent.intent_id,
    )
