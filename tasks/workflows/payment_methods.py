"""payment_method_received: a PaymentMethod card attached once, recorded once, deduplicated
by fingerprint against the user's cards of both kinds (a token's card and a PaymentMethod
of the same card are one card).

    started ──(new card, not attached)──> pm_attaching ──(Stripe: attach; row)──> pm_attached
       │                                        └──(same card recorded meanwhile)──> pm_discarding
       ├──(new card, attached to our customer by a SetupIntent: row)──> pm_attached
       ├──(known card, attached to our customer)──> pm_discarding
       ├──(known card, not attached)──> pm_attached (if make_default) or succeeded
       └──(attached to another customer)──> failed payment_method_unavailable
    pm_discarding ──(Stripe: detach ours)──> pm_attached (if make_default) or succeeded
    pm_attached ──(Stripe: invoice default, if first or asked)──> succeeded

Stripe's attach takes no metadata, and needs none: after its key expired a resumed attach
reads the PaymentMethod, which says whether it is attached to our customer.
"""

from __future__ import annotations

import enum
from typing import Any

from sqlalchemy import Connection

from core.errors import CardDeclined, PermanentError, StripeInvalidRequest, StripeNotFound
from db import users
from db.ledger import STARTED
from db.models import CardKind
from tasks.gateway import CardDetails, PaymentMethodCard
from tasks.messages import PaymentMethodReceived
from tasks.phases import Advance, Fail, Phase, Run, Step, Workflow
from tasks.workflows.cards_common import (
    CardProgress,
    adopt_winner,
    customer,
    default_attached,
    detach,
    finish_attached,
    known_card,
    record_attached,
)

NOT_FOUND = "payment_method_not_found"
UNAVAILABLE = "payment_method_unavailable"


class Point(enum.StrEnum):
    STARTED = STARTED
    # The attach may have reached Stripe: repeat it with the same key before anything else.
    ATTACHING = "pm_attaching"
    # The card is the user's already (recorded first by another event), but this
    # PaymentMethod is attached to our customer: detach it so Stripe holds the card once.
    DISCARDING = "pm_discarding"
    # The card is attached and recorded; only the default switch (if asked) remains.
    ATTACHED = "pm_attached"


PmRun = Run[PaymentMethodReceived, CardProgress]


def _unavailable(payment_method: str) -> PermanentError:
    return PermanentError(
        f"payment method {payment_method!r} is attached to another customer, or was detached"
        " and cannot be used again",
        code=UNAVAILABLE,
    )


def _retrieve(run: PmRun) -> PaymentMethodCard:
    """The message's PaymentMethod as Stripe holds it now.

    Raises:
        PermanentError: `payment_method_not_found` when Stripe knows no such id.
    """
    payment_method = run.message.payment_method
    try:
        return run.gateway.retrieve_payment_method(payment_method)
    except StripeNotFound:
        raise PermanentError(f"no such payment method {payment_method!r}", code=NOT_FOUND) from None


def _known_card(run: PmRun, conn: Connection, progress: CardProgress) -> Step:
    return known_card(run, conn, progress, Point.ATTACHED, with_kind=True)


# ---- started ------------------------------------------------------------------------------


def _read(run: PmRun) -> tuple[str, PaymentMethodCard]:
    # The customer first: a PaymentMethod is not read while its user is not registered.
    return customer(run, None), _retrieve(run)


def _dedupe(run: PmRun, conn: Connection, read: tuple[str, PaymentMethodCard]) -> Step:
    """Attach the card unless the user already has one with its fingerprint; record one
    attached to our customer already (the app's SetupIntent) as it is."""
    customer_id, pm = read
    if pm.customer_id not in (None, customer_id):
        return Fail(_unavailable(run.message.payment_method))
    ours = pm.customer_id == customer_id
    users.lock_user(conn, run.message.user_id)
    known = users.active_with_fingerprint(conn, run.message.user_id, pm.card.fingerprint)
    progress = CardProgress(customer_id=customer_id, card=pm.card)
    if known is not None and ours and known != pm.card.card_id:
        return Advance(
            Point.DISCARDING, progress.model_copy(update={"discard_card_id": pm.card.card_id})
        )
    if known is not None:
        return _known_card(
            run, conn, progress.model_copy(update={"card_id": known, "duplicate": True})
        )
    if ours:
        return _record(run, conn, pm.card, progress)
    return Advance(Point.ATTACHING, progress, starts_write=True)


def _record(run: PmRun, conn: Connection, attached: CardDetails, progress: CardProgress) -> Step:
    """Record the card; a concurrent attach of the same card that won the race sends ours
    to be detached instead."""
    recorded, progress = record_attached(run, conn, attached, CardKind.PAYMENT_METHOD, progress)
    if recorded:
        return Advance(Point.ATTACHED, progress)
    if users.active_with_fingerprint(conn, run.message.user_id, attached.fingerprint) == (
        attached.card_id
    ):
        # Another event of this same PaymentMethod recorded it first: it is the card to
        # keep, not a copy to detach.
        same = {"card_id": attached.card_id, "duplicate": True, "discard_card_id": None}
        return _known_card(run, conn, progress.model_copy(update=same))
    return Advance(Point.DISCARDING, progress)


# ---- pm_attaching ---------------------------------------------------------------------------


def _attach(run: PmRun) -> CardDetails:
    """Attach the PaymentMethod to our customer, or find it attached there already."""
    customer_id = customer(run, run.progress.customer_id)
    if run.key_may_have_expired():
        found = _retrieve(run)
        if found.customer_id == customer_id:  # our attach went through before the key expired
            return found.card
    try:
        attached = run.gateway.attach_payment_method(
            run.key("attach"), customer_id=customer_id, payment_method=run.message.payment_method
        )
    except StripeNotFound:
        raise PermanentError(
            f"no such payment method {run.message.payment_method!r}", code=NOT_FOUND
        ) from None
    except StripeInvalidRequest:
        # Stripe refuses a PaymentMethod attached already (or detached, used up). Attached
        # to our customer meanwhile (the app confirmed a SetupIntent) is what we wanted.
        found = _retrieve(run)
        if found.customer_id == customer_id:
            return found.card
        raise _unavailable(run.message.payment_method) from None
    return attached.card


def _record_attached(run: PmRun, conn: Connection, attached: CardDetails) -> Step:
    return _record(run, conn, attached, run.progress)


# ---- pm_discarding and pm_attached ----------------------------------------------------------


def _discard(run: PmRun) -> None:
    """The user has this card already: detach our PaymentMethod of it from Stripe."""
    detach(run.gateway, str(run.progress.discard_card_id))


def _adopt_winner(run: PmRun, conn: Connection, _: None) -> Step:
    # The recorded card was removed in between and ours is detached (a detached
    # PaymentMethod cannot be attached again): the app must collect the card anew.
    spent = "the card was removed while this payment method was being recorded"
    return adopt_winner(run, conn, Point.ATTACHED, with_kind=True, spent=spent)


def _finish_attached(run: PmRun, conn: Connection, _: None) -> Step:
    return finish_attached(run, conn, with_kind=True)


def _decline(_run: PmRun, _conn: Connection, error: PermanentError) -> dict[str, Any] | None:
    """A card declined by Stripe's check at attach: the decline code goes into the result."""
    if isinstance(error, CardDeclined):
        return {"decline_code": error.decline_code}
    return None


WORKFLOW: Workflow[PaymentMethodReceived, CardProgress] = Workflow(
    message_type="payment_method_received",
    progress=CardProgress,
    phases={
        Point.STARTED: Phase(call=_read, commit=_dedupe),
        Point.ATTACHING: Phase(call=_attach, commit=_record_attached),
        Point.DISCARDING: Phase(call=_discard, commit=_adopt_winner),
        Point.ATTACHED: Phase(call=default_attached, commit=_finish_attached),
    },
    on_failure=_decline,
)
