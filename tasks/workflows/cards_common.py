"""What the card workflows share: a card's progress, its result, the known-card and
lost-race decisions, the default switch, and removing a card of either kind from Stripe.

Not a workflow: card_token_received (cards.py) and payment_method_received
(payment_methods.py) both build on it and stay independent of each other."""

from __future__ import annotations

import contextlib
from typing import Any

from sqlalchemy import Connection

from core.errors import PermanentError, StripeInvalidRequest, StripeNotFound
from db import users
from db.models import CardKind
from tasks.gateway import CardDetails, StripeGateway
from tasks.phases import Advance, Fail, Progress, Run, Step, Succeed


class CardProgress(Progress):
    customer_id: str | None = None
    # The card as read (token or PaymentMethod) before anything was attached, then as
    # attached.
    card: CardDetails | None = None
    card_id: str | None = None
    # Postgres chose this card as the user's first: it becomes the default on Stripe too.
    first: bool = False
    duplicate: bool = False
    discard_card_id: str | None = None
    deleted_duplicate_card_id: str | None = None


class CustomerProgress(Progress):
    customer_id: str | None = None


# A run of card_token_received or payment_method_received: both have user_id and
# make_default, and keep CardProgress.
CardRun = Run[Any, CardProgress]


def customer(run: Run[Any, Any], known: str | None) -> str:
    """The customer recorded in progress, or (an event from before it was) read now."""
    if known is not None:
        return known
    with run.reading() as conn:
        return users.customer_of(conn, run.message.user_id)


def card_result(
    conn: Connection, user_id: str, card_id: str, progress: CardProgress, *, with_kind: bool
) -> Step:
    """The event's result: the card as Postgres holds it (`kind` for the modern path)."""
    card = users.card_of(conn, user_id, card_id, active=False)
    result: dict[str, Any] = {
        "card_id": card.stripe_card_id,
        "duplicate": progress.duplicate,
        "fingerprint": card.fingerprint,
        "brand": card.brand,
        "last4": card.last4,
        "is_default": card.is_default,
    }
    if with_kind:
        result["kind"] = card.kind
    if progress.deleted_duplicate_card_id:
        result["deleted_duplicate_card_id"] = progress.deleted_duplicate_card_id
    return Succeed(result)


def known_card(
    run: CardRun, conn: Connection, progress: CardProgress, attached: str, *, with_kind: bool
) -> Step:
    """The user has this card already: make it the default if asked (at recovery point
    `attached`), else done."""
    if run.message.make_default:
        return Advance(attached, progress)
    return card_result(
        conn, run.message.user_id, str(progress.card_id), progress, with_kind=with_kind
    )


def new_card(run: CardRun, attached: CardDetails, first: bool, kind: CardKind) -> users.NewCard:
    assert attached.card_id is not None
    return users.NewCard(
        stripe_card_id=attached.card_id,
        user_id=run.message.user_id,
        fingerprint=attached.fingerprint,
        brand=attached.brand,
        last4=attached.last4,
        exp_month=attached.exp_month,
        exp_year=attached.exp_year,
        is_default=first,
        event_id=run.message.event_id,
        kind=kind,
    )


def record_attached(
    run: CardRun, conn: Connection, attached: CardDetails, kind: CardKind, progress: CardProgress
) -> tuple[bool, CardProgress]:
    """Record the attached card; (False, `progress` with `discard_card_id`) when a
    concurrent attach of the same card won the race, else (True, `progress` with the card)."""
    assert attached.card_id is not None
    users.lock_user(conn, run.message.user_id)
    # The user's first active card becomes the default; Stripe is told next.
    first = users.active_card_count(conn, run.message.user_id) == 0
    progress = progress.model_copy(update={"card": attached})
    if not users.add_card(conn, new_card(run, attached, first, kind)):
        return False, progress.model_copy(update={"discard_card_id": attached.card_id})
    return True, progress.model_copy(update={"card_id": attached.card_id, "first": first})


def adopt_winner(
    run: CardRun, conn: Connection, attached: str, *, with_kind: bool, spent: str
) -> Step:
    """Our copy of the card is gone from Stripe: the user's recorded card of the same
    fingerprint is the result (a duplicate). `spent` says why the app must send a new card
    when that one was removed meanwhile."""
    assert run.progress.card is not None
    winner = users.active_with_fingerprint(conn, run.message.user_id, run.progress.card.fingerprint)
    if winner is None:
        return Fail(PermanentError(spent, code="card_not_found"))
    progress = run.progress.model_copy(
        update={
            "card_id": winner,
            "duplicate": True,
            "deleted_duplicate_card_id": run.progress.discard_card_id,
        }
    )
    return known_card(run, conn, progress, attached, with_kind=with_kind)


def default_on_stripe(run: Run[Any, Any], customer_id: str, card_id: str) -> None:
    """Make the card the default on Stripe (Postgres follows in the commit)."""
    try:
        run.gateway.set_default_card(run.key("default"), customer_id=customer_id, card_id=card_id)
    except StripeNotFound:
        raise PermanentError(f"card {card_id!r} is gone on Stripe", code="card_not_found") from None


def wants_default(run: CardRun) -> bool:
    # Postgres decided which card is the user's first; Stripe follows, because two first
    # cards attached at once may reach Stripe in the other order.
    return bool(run.message.make_default or run.progress.first)


def default_attached(run: CardRun) -> None:
    if wants_default(run):
        customer_id = customer(run, run.progress.customer_id)
        default_on_stripe(run, customer_id, str(run.progress.card_id))


def finish_attached(run: CardRun, conn: Connection, *, with_kind: bool) -> Step:
    msg, card_id = run.message, str(run.progress.card_id)
    if wants_default(run):
        users.lock_user(conn, msg.user_id)
        users.card_of(conn, msg.user_id, card_id)
        users.make_default(conn, msg.user_id, card_id)
    return card_result(conn, msg.user_id, card_id, run.progress, with_kind=with_kind)


def detach(gateway: StripeGateway, payment_method: str) -> None:
    """Detach a PaymentMethod; one detached already (by an earlier attempt, or on the
    dashboard) counts as done: Stripe refuses to detach it again, and a read says why."""
    try:
        gateway.detach_payment_method(payment_method)
    except StripeNotFound:
        return
    except StripeInvalidRequest:
        if gateway.retrieve_payment_method(payment_method).customer_id is not None:
            raise
        # Not attached any more: what the detach was for.


def remove_from_stripe(gateway: StripeGateway, customer_id: str, card_id: str) -> None:
    """A card gone from the customer on Stripe: a PaymentMethod detached, a legacy card
    deleted; one gone already counts as done."""
    if card_id.startswith("pm_"):
        detach(gateway, card_id)
        return
    with contextlib.suppress(StripeNotFound):  # an earlier attempt of this event deleted it
        gateway.delete_card(customer_id=customer_id, card_id=card_id)
