"""What both charge APIs share: the recovery points, the progress, the checks and the
pending charges row at `started`, and the records of a failure.

At `started` the business limits apply too, before anything reaches Stripe: the largest
amount per currency (PAYWORKER_MAX_AMOUNT, `amount_over_limit`) and the most charges per
user in a rolling hour (PAYWORKER_USER_CHARGE_LIMIT, `velocity_limit`). The API the event
charges through (PAYWORKER_CHARGE_API) is chosen here too and kept in its progress: an
event resumes with the API it started with, whatever the setting says by then.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Connection

from core.errors import CardDeclined, PermanentError, PrerequisiteMissing, StripeNotFound
from core.settings import USER_CHARGE_WINDOW_SECONDS
from db import charges, users
from db.ledger import STARTED
from db.models import ChargeStatus
from tasks.messages import ChargeRequested
from tasks.money import check_charge_amount
from tasks.phases import Advance, Fail, Progress, Run, Step

PAYMENT_INTENTS = "payment_intents"
CHARGES = "charges"
# Failure codes of a charge whose PaymentIntent ended canceled: ours after the customer
# never authenticated (authentication_required), or someone else's on Stripe
# (payment_canceled). Their charges row is `canceled`, not `failed`.
CANCELED_CODES = frozenset({"authentication_required", "payment_canceled"})


class Point(enum.StrEnum):
    STARTED = STARTED
    # Charges API. A pending charges row exists and the charge may have reached Stripe:
    # repeat the create with the same key; Stripe's replay tells what happened.
    CHARGING = "charge_creating"
    # PaymentIntents. A pending charges row exists and the PaymentIntent may have reached
    # Stripe: repeat the create with the same key, as above.
    INTENT_CREATING = "intent_creating"
    # The PaymentIntent waits for its customer (or Stripe is processing it): read it again
    # when the event is re-driven.
    INTENT_WATCHING = "intent_watching"
    # The customer never came back in time: cancel the PaymentIntent (the same key again
    # when resumed), then fail the event.
    INTENT_CANCELING = "intent_canceling"


class ChargeProgress(Progress):
    customer_id: str | None = None
    card_id: str | None = None
    # The API this event charges through; None: started before PaymentIntents (Charges).
    api: str | None = None
    intent_id: str | None = None
    # When the event first waited for its customer.
    action_since: datetime | None = None


ChargeRun = Run[ChargeRequested, ChargeProgress]


@dataclass(frozen=True)
class Declined:
    """Stripe declined the card (a phase's `call` returns it for its `commit` to fail)."""

    error: CardDeclined


T = TypeVar("T")


def charge_once(
    run: ChargeRun, find: Callable[[], T | None], create: Callable[[], T]
) -> T | Declined:
    """The charge's one Stripe write, through either API (`Run.resume_write`): a decline is
    an outcome to record, a card gone on Stripe is `card_not_found`."""
    try:
        return run.resume_write(find, create)
    except CardDeclined as declined:
        return Declined(declined)
    except StripeNotFound as missing:
        raise PermanentError(missing.message, code="card_not_found") from None


def check_amount(run: ChargeRun) -> None:
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
    (pending, waiting for authentication, or succeeded) from the last hour. Counted under
    the user's lock, which is held until this transaction, and the pending row it writes,
    commit: a concurrent charge of the same user counts after it."""
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


def record_pending(run: ChargeRun, conn: Connection, _: None) -> Step:
    """Check the user's charge rate, choose the customer, the card and the API, and write
    the pending charges row."""
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
    api = run.settings.charge_api
    progress = ChargeProgress(customer_id=customer_id, card_id=card_id, api=api)
    point = Point.INTENT_CREATING if api == PAYMENT_INTENTS else Point.CHARGING
    return Advance(point, progress, starts_write=True)


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


def record_failure(run: ChargeRun, conn: Connection, error: PermanentError) -> dict[str, Any]:
    """A failed charge fails its charges row too (when it has one: a charge refused before
    its pending row was written has none); one whose PaymentIntent ended canceled is
    `canceled`. The PaymentIntent's id is kept where known."""
    declined = error if isinstance(error, CardDeclined) else None
    failure_code = declined.failure_code if declined else error.code
    decline_code = declined.decline_code if declined else None
    charge_id = declined.charge_id if declined else None
    intent_id = declined.payment_intent_id if declined else None
    intent_id = intent_id or getattr(run.progress, "intent_id", None)
    canceled = error.code in CANCELED_CODES and intent_id is not None
    charges.record_outcome(
        conn,
        run.message.event_id,
        ChargeStatus.CANCELED if canceled else ChargeStatus.FAILED,
        charge_id=charge_id,
        failure_code=failure_code,
        decline_code=decline_code,
        failure_message=error.message,
        payment_intent_id=intent_id,
    )
    records: dict[str, Any] = {
        "decline_code": decline_code,
        "failure_code": failure_code,
        "charge_id": charge_id,
    }
    if intent_id is not None:
        records["payment_intent_id"] = intent_id
    return records


def api_of(run: Run[Any, Any]) -> str:
    """The API an event charges (or would charge) through: its progress' once chosen."""
    return getattr(run.progress, "api", None) or (
        CHARGES if run.point == Point.CHARGING else run.settings.charge_api
    )
