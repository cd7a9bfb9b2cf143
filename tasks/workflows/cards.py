"""card_token_received, default_card_changed, card_removed: Stripe and Postgres agree.

card_token_received:

    started ──(new fingerprint)──> card_attaching ──(Stripe: attach; row)──> card_attached
       │                                 └──(same card recorded meanwhile)──> card_discarding
       └──(known card)──> card_attached (if make_default) or succeeded
    card_discarding ──(Stripe: delete ours)──> card_attached (if make_default) or succeeded
    card_attached ──(Stripe: default, if first or asked)──> succeeded

default_card_changed: started ──> default_setting ──(Stripe: default)──> succeeded
card_removed:         started ──> card_removing ──(Stripe: delete, or detach a pm_)──> succeeded

Both take a legacy card (card_...) or a PaymentMethod (pm_...); the gateway sets the
default of either kind (default_source, invoice_settings.default_payment_method).
"""

from __future__ import annotations

import enum

from sqlalchemy import Connection

from db import users
from db.ledger import STARTED, now
from db.models import CardKind
from db.replays import EventRow
from tasks.gateway import CardDetails
from tasks.messages import CardRemoved, CardTokenReceived, DefaultCardChanged
from tasks.phases import Advance, Phase, Regeneration, Run, Step, Succeed, Workflow
from tasks.workflows.cards_common import (
    CardProgress,
    CustomerProgress,
    adopt_winner,
    customer,
    default_attached,
    default_on_stripe,
    finish_attached,
    known_card,
    record_attached,
    remove_from_stripe,
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


TokenRun = Run[CardTokenReceived, CardProgress]


def _known_card(run: TokenRun, conn: Connection, progress: CardProgress) -> Step:
    """The user has this card already: make it the default if asked, else done."""
    return known_card(run, conn, progress, Point.ATTACHED, with_kind=False)


# ---- card_token_received -------------------------------------------------------------------


def _read_token(run: TokenRun) -> tuple[str, CardDetails]:
    # The customer first: a token is not read while its user is not registered.
    customer_id = customer(run, None)
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
    customer_id = customer(run, run.progress.customer_id)
    return run.resume_write(
        lambda: run.gateway.find_card(
            customer_id=customer_id, event_id=msg.event_id, generation=run.lookup_generation
        ),
        lambda: run.gateway.attach_card(
            run.key("attach"), customer_id=customer_id, token=msg.token, metadata=run.metadata()
        ),
    )


def _record_attached(run: TokenRun, conn: Connection, attached: CardDetails) -> Step:
    """Record the card; a concurrent attach of the same card that won the race sends ours
    to be deleted instead."""
    recorded, progress = record_attached(run, conn, attached, CardKind.SOURCE, run.progress)
    point = Point.ATTACHED if recorded else Point.DISCARDING
    return Advance(point, progress, forget_token=True)


def _discard(run: TokenRun) -> None:
    """Another event attached the same card first: delete our copy from Stripe."""
    customer_id = customer(run, run.progress.customer_id)
    remove_from_stripe(run.gateway, customer_id, str(run.progress.discard_card_id))


def _adopt_winner(run: TokenRun, conn: Connection, _: None) -> Step:
    # The winner was removed in between and our copy is deleted: nothing is left to
    # adopt, and the token is spent, so the upstream app must send a new one.
    spent = "the card was removed while this token was being attached"
    return adopt_winner(run, conn, Point.ATTACHED, with_kind=False, spent=spent)


def _finish_attached(run: TokenRun, conn: Connection, _: None) -> Step:
    return finish_attached(run, conn, with_kind=False)


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
        Point.ATTACHED: Phase(call=default_attached, commit=_finish_attached),
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
    customer_id = customer(run, run.progress.customer_id)
    default_on_stripe(run, customer_id, run.message.card_id)


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
    """Remove the card from the customer on Stripe (a legacy card deleted, a PaymentMethod
    detached); returns Stripe's default card afterwards."""
    customer_id = customer(run, run.progress.customer_id)
    remove_from_stripe(run.gateway, customer_id, run.message.card_id)
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
