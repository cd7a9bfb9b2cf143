"""card_token_received, default_card_changed, card_removed: Stripe and Postgres agree."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from db.models import Card
from tasks import ledger
from tasks.context import (
    Context,
    active_card_count,
    card_of,
    customer_of,
    lock_user,
    make_default,
)
from tasks.errors import PermanentError, StripeNotFound
from tasks.gateway import CardDetails
from tasks.ledger import STARTED, now
from tasks.messages import CardRemoved, CardTokenReceived, DefaultCardChanged


class Point(enum.StrEnum):
    STARTED = STARTED
    # The attach may have reached Stripe: repeat it with the same key before anything else.
    ATTACHING = "card_attaching"
    # The card is attached and recorded; only the default switch (if asked) remains.
    ATTACHED = "card_attached"
    SETTING_DEFAULT = "default_setting"
    REMOVING = "card_removing"


# Recovery points at which resuming card_token_received still needs the card token.
TOKEN_NEEDED_AT = frozenset({Point.STARTED, Point.ATTACHING})


def card_token_received(ctx: Context, msg: CardTokenReceived) -> None:
    """Attach the token's card unless the user already has it (same fingerprint)."""
    with ctx.tx() as session:
        customer_id = customer_of(session, msg.user_id).stripe_customer_id
    if ctx.point == Point.STARTED:
        details = ctx.gateway.retrieve_token(msg.token)
        with ctx.tx() as session:
            lock_user(session, msg.user_id)
            known = _active_with_fingerprint(session, msg.user_id, details.fingerprint)
            if known is None:
                ctx.begin_write(session, Point.ATTACHING, card=dataclasses.asdict(details))
        if known is not None:
            _finish_duplicate(ctx, msg, customer_id, known)
            return
    if ctx.point == Point.ATTACHING:
        attached = None
        if ctx.key_may_have_expired():
            attached = ctx.gateway.find_card(customer_id=customer_id, event_id=msg.event_id)
        if attached is None:
            attached = ctx.gateway.attach_card(
                ctx.key("attach"),
                customer_id=customer_id,
                token=msg.token,
                metadata=msg.stripe_metadata(),
            )
        if not _record_attached(ctx, msg, attached):
            _lose_race(ctx, msg, customer_id, attached)
            return
    card_id = ctx.progress["card_id"]
    # Postgres decided which card is the user's first; Stripe follows, because two first
    # cards attached at once may reach Stripe in the other order.
    if msg.make_default or ctx.progress.get("first"):
        _set_default(ctx, msg.user_id, customer_id, card_id)
    with ctx.tx() as session:
        card = card_of(session, msg.user_id, card_id, active=False)
        ctx.succeed(session, _card_result(card, duplicate=False))


def _active_with_fingerprint(session: Any, user_id: str, fingerprint: str) -> str | None:
    return session.scalar(  # type: ignore[no-any-return]
        select(Card.stripe_card_id).where(
            Card.user_id == user_id, Card.fingerprint == fingerprint, Card.removed_at.is_(None)
        )
    )


def _record_attached(ctx: Context, msg: CardTokenReceived, attached: CardDetails) -> bool:
    """Insert the card row; False when a concurrent attach of the same card won the race."""
    assert attached.card_id is not None
    try:
        with ctx.tx() as session:
            lock_user(session, msg.user_id)
            first = active_card_count(session, msg.user_id) == 0
            session.add(
                Card(
                    stripe_card_id=attached.card_id,
                    user_id=msg.user_id,
                    fingerprint=attached.fingerprint,
                    brand=attached.brand,
                    last4=attached.last4,
                    exp_month=attached.exp_month,
                    exp_year=attached.exp_year,
                    # The user's first active card becomes the default; Stripe is told below.
                    is_default=first,
                    event_id=msg.event_id,
                )
            )
            session.flush()
            ctx.checkpoint(session, Point.ATTACHED, card_id=attached.card_id, first=first)
            ledger.forget_token(session, ctx.claim)
    except IntegrityError:
        return False
    return True


def _lose_race(
    ctx: Context, msg: CardTokenReceived, customer_id: str, attached: CardDetails
) -> None:
    """Another event attached the same card first: delete ours from Stripe, adopt theirs."""
    assert attached.card_id is not None
    with contextlib.suppress(StripeNotFound):  # deleted by an earlier attempt of this event
        ctx.gateway.delete_card(customer_id=customer_id, card_id=attached.card_id)
    with ctx.tx() as session:
        winner = _active_with_fingerprint(session, msg.user_id, attached.fingerprint)
    if winner is None:
        # The winner was removed in between and our copy is deleted: nothing is left to
        # adopt, and the token is spent, so the upstream app must send a new one.
        raise PermanentError(
            "the card was removed while this token was being attached", code="card_not_found"
        )
    _finish_duplicate(ctx, msg, customer_id, winner, deleted_card_id=attached.card_id)


def _finish_duplicate(
    ctx: Context,
    msg: CardTokenReceived,
    customer_id: str,
    card_id: str,
    deleted_card_id: str | None = None,
) -> None:
    if msg.make_default:
        _set_default(ctx, msg.user_id, customer_id, card_id)
    with ctx.tx() as session:
        card = card_of(session, msg.user_id, card_id, active=False)
        result = _card_result(card, duplicate=True)
        if deleted_card_id:
            result["deleted_duplicate_card_id"] = deleted_card_id
        ctx.succeed(session, result)


def _card_result(card: Card, *, duplicate: bool) -> dict[str, Any]:
    return {
        "card_id": card.stripe_card_id,
        "duplicate": duplicate,
        "fingerprint": card.fingerprint,
        "brand": card.brand,
        "last4": card.last4,
        "is_default": card.is_default,
    }


def _set_default(ctx: Context, user_id: str, customer_id: str, card_id: str) -> str | None:
    """Make the card the default on Stripe first, then in Postgres."""
    try:
        ctx.gateway.set_default_card(ctx.key("default"), customer_id=customer_id, card_id=card_id)
    except StripeNotFound:
        raise PermanentError(f"card {card_id!r} is gone on Stripe", code="card_not_found") from None
    with ctx.tx() as session:
        lock_user(session, user_id)
        card_of(session, user_id, card_id)
        return make_default(session, user_id, card_id)


def default_card_changed(ctx: Context, msg: DefaultCardChanged) -> None:
    """Switch the user's default card, on Stripe and in Postgres."""
    with ctx.tx() as session:
        customer_id = customer_of(session, msg.user_id).stripe_customer_id
        card_of(session, msg.user_id, msg.card_id)
        ctx.checkpoint(session, Point.SETTING_DEFAULT)
    previous = _set_default(ctx, msg.user_id, customer_id, msg.card_id)
    with ctx.tx() as session:
        ctx.succeed(session, {"card_id": msg.card_id, "previous_default_card_id": previous})


def card_removed(ctx: Context, msg: CardRemoved) -> None:
    """Delete the card on Stripe, then mark it removed and mirror Stripe's new default."""
    with ctx.tx() as session:
        customer_id = customer_of(session, msg.user_id).stripe_customer_id
        card = card_of(session, msg.user_id, msg.card_id, active=False)
        if card.removed_at is not None and ctx.point != Point.REMOVING:
            ctx.succeed(session, {"card_id": msg.card_id, "already_removed": True})
            return
        ctx.checkpoint(session, Point.REMOVING)
    with contextlib.suppress(StripeNotFound):  # an earlier attempt of this event deleted it
        ctx.gateway.delete_card(customer_id=customer_id, card_id=msg.card_id)
    stripe_default = ctx.gateway.default_card(customer_id)
    with ctx.tx() as session:
        lock_user(session, msg.user_id)
        card = card_of(session, msg.user_id, msg.card_id, active=False)
        card.is_default = False
        if card.removed_at is None:
            card.removed_at = now()
        session.flush()
        new_default = None
        if stripe_default and stripe_default != msg.card_id:
            make_default(session, msg.user_id, stripe_default)
            new_default = stripe_default
        ctx.succeed(
            session,
            {"card_id": msg.card_id, "already_removed": False, "default_card_id": new_default},
        )
