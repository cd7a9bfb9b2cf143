"""card_token_received, default_card_changed, card_removed: Stripe and Postgres agree.

card_token_received:

    started ──(new fingerprint)──> card_attaching ──(Stripe: attach; row)──> card_attached
       │                                 └──(same card recorded meanwhile)──> card_discarding
       └──(known card)──> card_attached (if make_default) or succeeded
    card_discarding ──(Stripe: delete ours)──> card_attached (if make_default) or succeeded
    card_attached ──(Stripe: default, if first or asked)──> succeeded

default_card_changed: started ──> default_setting ──(Stripe: default)──> succeeded
card_removed:         started ──> card_removing ──(Stripe: delete)──> succeeded
"""

from __future__ import annotations

import contextlib
import enum
from typing import Any

from sqlalchemy import Connection

from core.errors import PermanentError, StripeNotFound
from db import users
from db.ledger import STARTED, now
from db.replays import EventRow
from tasks.gateway import CardDetails
from tasks.messages import CardRemoved, CardTokenReceived, DefaultCardChanged
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
    # The attach may have reached Stripe: repeat it with the same key before anything else.
    ATTACHING = "card_attaching"
    # Our attach lost the race to another event attaching the same card: delete ours.
    DISCARDING = "card_discarding"
    # The card is attached and recorded; only the default switch (if asked) remains.
    ATTACHED = "card_attached"
    SETTING_DEFAULT = "default_setting"
    REMOVING = "card_removing"


class CardProgress(Progress):
    customer_id: str | None = None
    # The token's card, read before anything was attached.
    card: CardDetails | None = None
    card_id: str | None = None
    # Postgres chose this card as the user's first: it becomes the default on Stripe too.
    first: bool = False
    duplicate: bool = False
    discard_card_id: str | None = None
    deleted_duplicate_card_id: str | None = None


class CustomerProgress(Progress):
    customer_id: str | None = None


TokenRun = Run[CardTokenReceived, CardProgress]


def _customer(run: Run[Any, Any], known: str | None) -> str:
    """The customer recorded in progress, or (an event from before it was) read now."""
    if known is not None:
        return known
    with run.reading() as conn:
        return users.customer_of(conn, run.message.user_id)


def _card_result(conn: Connection, user_id: str, card_id: str, progress: CardProgress) -> Step:
    card = users.card_of(conn, user_id, card_id, active=False)
    result: dict[str, Any] = {
        "card_id": card.stripe_card_id,
        "duplicate": progress.duplicate,
        "fingerprint": card.fingerprint,
        "brand": card.brand,
        "last4": card.last4,
        "is_default": card.is_default,
    }
    if progress.deleted_duplicate_card_id:
        result["deleted_duplicate_card_id"] = progress.deleted_duplicate_card_id
    return Succeed(result)


def _known_card(run: TokenRun, conn: Connection, progress: CardProgress) -> Step:
    """The user has this card already: make it the default if asked, else done."""
    if run.message.make_default:
        return Advance(Point.ATTACHED, progress)
    return _card_result(conn, run.message.user_id, str(progress.card_id), progress)


# ---- card_token_received -------------------------------------------------------------------


def _read_token(run: TokenRun) -> tuple[str, CardDetails]:
    # The customer first: a token is not read while its user is not registered.
    customer_id = _customer(run, None)
    return customer_id, run.gateway.retrieve_token(run.message.token)


def _dedupe(run: TokenRun, conn: Connection, read: tuple[str, CardDetails]) -> Step:
    """Attach the card unless the user already has one with its fingerprint."""
    customer_id, details = read
    users.lock_user(conn, run.message.user_id)
    known = users.active_with_fingerprint(conn, run.message.user_id, details.fingerprint)
    if known is not None:
        progress = CardProgress(customer_id=customer_id, card_id=known, duplicate=True)
        return _known_card(run, conn, progress)
    progress = CardProgress(customer_id=customer_id, card=details)
    return Advance(Point.ATTACHING, progress, starts_write=True)


def _attach(run: TokenRun) -> CardDetails:
    msg = run.message
    customer_id = _customer(run, run.progress.customer_id)
    attached = None
    if run.key_may_have_expired():
        attached = run.gateway.find_card(
            customer_id=customer_id, event_id=msg.event_id, generation=run.lookup_generation
        )
    return attached or run.gateway.attach_card(
        run.key("attach"), customer_id=customer_id, token=msg.token, metadata=run.metadata()
    )


def _record_attached(run: TokenRun, conn: Connection, attached: CardDetails) -> Step:
    """Record the card; a concurrent attach of the same card that won the race sends ours
    to be deleted instead."""
    msg = run.message
    assert attached.card_id is not None
    users.lock_user(conn, msg.user_id)
    # The user's first active card becomes the default; Stripe is told next.
    first = users.active_card_count(conn, msg.user_id) == 0
    new = users.NewCard(
        stripe_card_id=attached.card_id,
        user_id=msg.user_id,
        fingerprint=attached.fingerprint,
        brand=attached.brand,
        last4=attached.last4,
        exp_month=attached.exp_month,
        exp_year=attached.exp_year,
        is_default=first,
        event_id=msg.event_id,
    )
    progress = run.progress.model_copy(update={"card": attached})
    if not users.add_card(conn, new):
        discard = progress.model_copy(update={"discard_card_id": attached.card_id})
        return Advance(Point.DISCARDING, discard, forget_token=True)
    done = progress.model_copy(update={"card_id": attached.card_id, "first": first})
    return Advance(Point.ATTACHED, done, forget_token=True)


def _discard(run: TokenRun) -> None:
    """Another event attached the same card first: delete our copy from Stripe."""
    customer_id = _customer(run, run.progress.customer_id)
    with contextlib.suppress(StripeNotFound):  # deleted by an earlier attempt of this event
        run.gateway.delete_card(customer_id=customer_id, card_id=str(run.progress.discard_card_id))


def _adopt_winner(run: TokenRun, conn: Connection, _: None) -> Step:
    assert run.progress.card is not None
    winner = users.active_with_fingerprint(conn, run.message.user_id, run.progress.card.fingerprint)
    if winner is None:
        # The winner was removed in between and our copy is deleted: nothing is left to
        # adopt, and the token is spent, so the upstream app must send a new one.
        error = PermanentError(
            "the card was removed while this token was being attached", code="card_not_found"
        )
        return Fail(error)
    progress = run.progress.model_copy(
        update={
            "card_id": winner,
            "duplicate": True,
            "deleted_duplicate_card_id": run.progress.discard_card_id,
        }
    )
    return _known_card(run, conn, progress)


def _default_on_stripe(run: Run[Any, Any], customer_id: str, card_id: str) -> None:
    """Make the card the default on Stripe (Postgres follows in the commit)."""
    try:
        run.gateway.set_default_card(run.key("default"), customer_id=customer_id, card_id=card_id)
    except StripeNotFound:
        raise PermanentError(f"card {card_id!r} is gone on Stripe", code="card_not_found") from None


def _wants_default(run: TokenRun) -> bool:
    # Postgres decided which card is the user's first; Stripe follows, because two first
    # cards attached at once may reach Stripe in the other order.
    return run.message.make_default or run.progress.first


def _default_attached(run: TokenRun) -> None:
    if _wants_default(run):
        customer_id = _customer(run, run.progress.customer_id)
        _default_on_stripe(run, customer_id, str(run.progress.card_id))


def _finish_attached(run: TokenRun, conn: Connection, _: None) -> Step:
    msg, card_id = run.message, str(run.progress.card_id)
    if _wants_default(run):
        users.lock_user(conn, msg.user_id)
        users.card_of(conn, msg.user_id, card_id)
        users.make_default(conn, msg.user_id, card_id)
    return _card_result(conn, msg.user_id, card_id, run.progress)


def _no_new_generation(_conn: Connection, _event: EventRow) -> Regeneration | str:
    return (
        "a failed card_token_received has no card token any more (it is erased once"
        " an event is final); the app must send a new message with a fresh token"
    )


CARD_TOKEN_RECEIVED: Workflow[CardTokenReceived, CardProgress] = Workflow(
    message_type="card_token_received",
    progress=CardProgress,
    phases={
        Point.STARTED: Phase(call=_read_token, commit=_dedupe),
        Point.ATTACHING: Phase(call=_attach, commit=_record_attached),
        Point.DISCARDING: Phase(call=_discard, commit=_adopt_winner),
        Point.ATTACHED: Phase(call=_default_attached, commit=_finish_attached),
    },
    # The token is read at `started` and attached at `card_attaching`.
    token_needed_at=frozenset({Point.STARTED, Point.ATTACHING}),
    regenerate=_no_new_generation,
)


# ---- default_card_changed ----------------------------------------------------------------

DefaultRun = Run[DefaultCardChanged, CustomerProgress]


def _check_card(run: DefaultRun, conn: Connection, _: None) -> Step:
    customer_id = users.customer_of(conn, run.message.user_id)
    users.card_of(conn, run.message.user_id, run.message.card_id)
    return Advance(Point.SETTING_DEFAULT, CustomerProgress(customer_id=customer_id))


def _set_default(run: DefaultRun) -> None:
    customer_id = _customer(run, run.progress.customer_id)
    _default_on_stripe(run, customer_id, run.message.card_id)


def _record_default(run: DefaultRun, conn: Connection, _: None) -> Step:
    msg = run.message
    users.lock_user(conn, msg.user_id)
    users.card_of(conn, msg.user_id, msg.card_id)
    previous = users.make_default(conn, msg.user_id, msg.card_id)
    return Succeed({"card_id": msg.card_id, "previous_default_card_id": previous})


DEFAULT_CARD_CHANGED: Workflow[DefaultCardChanged, CustomerProgress] = Workflow(
    message_type="default_card_changed",
    progress=CustomerProgress,
    phases={
        Point.STARTED: Phase(commit=_check_card),
        Point.SETTING_DEFAULT: Phase(call=_set_default, commit=_record_default),
    },
)


# ---- card_removed ----------------------------------------------------------------------------

RemovalRun = Run[CardRemoved, CustomerProgress]


def _check_removal(run: RemovalRun, conn: Connection, _: None) -> Step:
    customer_id = users.customer_of(conn, run.message.user_id)
    card = users.card_of(conn, run.message.user_id, run.message.card_id, active=False)
    if card.removed_at is not None:
        return Succeed({"card_id": run.message.card_id, "already_removed": True})
    return Advance(Point.REMOVING, CustomerProgress(customer_id=customer_id))


def _delete(run: RemovalRun) -> str | None:
    """Delete the card on Stripe; returns Stripe's default card afterwards."""
    customer_id = _customer(run, run.progress.customer_id)
    with contextlib.suppress(StripeNotFound):  # an earlier attempt of this event deleted it
        run.gateway.delete_card(customer_id=customer_id, card_id=run.message.card_id)
    return run.gateway.default_card(customer_id)


def _record_removal(run: RemovalRun, conn: Connection, stripe_default: str | None) -> Step:
    """Mark the card removed and mirror Stripe's new default."""
    msg = run.message
    users.lock_user(conn, msg.user_id)
    users.card_of(conn, msg.user_id, msg.card_id, active=False)
    users.mark_removed(conn, msg.card_id, now())
    new_default = None
    if stripe_default and stripe_default != msg.card_id:
        users.make_default(conn, msg.user_id, stripe_default)
        new_default = stripe_default
    result = {"card_id": msg.card_id, "already_removed": False, "default_card_id": new_default}
    return Succeed(result)


CARD_REMOVED: Workflow[CardRemoved, CustomerProgress] = Workflow(
    message_type="card_removed",
    progress=CustomerProgress,
    phases={
        Point.STARTED: Phase(commit=_check_removal),
        Point.REMOVING: Phase(call=_delete, commit=_record_removal),
    },
)
