"""Statements about a user's customer and cards, in the caller's transaction. Core only;
each returns typed rows. Decisions about them are the workflows' (tasks/workflows/)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import Connection, Table, func, select, text, update
from sqlalchemy.dialects.postgresql import insert

from core.errors import PermanentError, PrerequisiteMissing
from db.models import Card, CardKind, Customer

CUSTOMERS = cast(Table, Customer.__table__)
CARDS = cast(Table, Card.__table__)


@dataclass(frozen=True)
class CardRow:
    stripe_card_id: str
    user_id: str
    fingerprint: str
    brand: str | None
    last4: str | None
    is_default: bool
    removed_at: datetime | None
    kind: str = CardKind.SOURCE


@dataclass(frozen=True)
class NewCard:
    stripe_card_id: str
    user_id: str
    fingerprint: str
    brand: str | None
    last4: str | None
    exp_month: int | None
    exp_year: int | None
    is_default: bool
    event_id: str
    # A legacy card (card_..., from a token) or a PaymentMethod (pm_...).
    kind: CardKind = CardKind.SOURCE


_CARD_COLUMNS = (
    CARDS.c.stripe_card_id,
    CARDS.c.user_id,
    CARDS.c.fingerprint,
    CARDS.c.brand,
    CARDS.c.last4,
    CARDS.c.is_default,
    CARDS.c.removed_at,
    CARDS.c.kind,
)


def lock_user(conn: Connection, user_id: str) -> None:
    """Serialise card and customer decisions of one user until the transaction ends."""
    conn.execute(
        text("SELECT pg_advisory_xact_lock(hashtext('payworker:user:' || :user_id))"),
        {"user_id": user_id},
    )


def customer_id(conn: Connection, user_id: str) -> str | None:
    """The user's Stripe customer id, None before user_registered is processed."""
    found = conn.execute(
        select(CUSTOMERS.c.stripe_customer_id).where(CUSTOMERS.c.user_id == user_id)
    ).scalar()
    return str(found) if found is not None else None


def customer_of(conn: Connection, user_id: str) -> str:
    """The user's Stripe customer id.

    Raises:
        PrerequisiteMissing: `customer_not_found` until user_registered is processed.
    """
    found = customer_id(conn, user_id)
    if found is None:
        raise PrerequisiteMissing(
            f"user {user_id!r} has no customer yet (user_registered not processed)",
            code="customer_not_found",
        )
    return found


def add_customer(
    conn: Connection, *, user_id: str, stripe_customer_id: str, email: str, name: str | None,
    event_id: str,
) -> None:  # fmt: skip
    conn.execute(
        insert(CUSTOMERS).values(
            user_id=user_id,
            stripe_customer_id=stripe_customer_id,
            email=email,
            name=name,
            event_id=event_id,
        )
    )


def card(conn: Connection, card_id: str) -> CardRow | None:
    row = conn.execute(select(*_CARD_COLUMNS).where(CARDS.c.stripe_card_id == card_id)).first()
    return CardRow(**row._mapping) if row is not None else None


def card_of(conn: Connection, user_id: str, card_id: str, *, active: bool = True) -> CardRow:
    """A card of this user.

    Raises:
        PermanentError: `card_not_found` when the card is another user's, or removed.
        PrerequisiteMissing: `card_not_found` when the card is unknown so far.
    """
    found = card(conn, card_id)
    if found is None:
        raise PrerequisiteMissing(
            f"card {card_id!r} is not known yet (card_token_received not processed)",
            code="card_not_found",
        )
    if found.user_id != user_id:
        raise PermanentError(f"card {card_id!r} does not belong to user", code="card_not_found")
    if active and found.removed_at is not None:
        raise PermanentError(f"card {card_id!r} has been removed", code="card_not_found")
    return found


def active_with_fingerprint(conn: Connection, user_id: str, fingerprint: str) -> str | None:
    """The user's active card with this fingerprint, if any."""
    found = conn.execute(
        select(CARDS.c.stripe_card_id).where(
            CARDS.c.user_id == user_id,
            CARDS.c.fingerprint == fingerprint,
            CARDS.c.removed_at.is_(None),
        )
    ).scalar()
    return str(found) if found is not None else None


def active_card_count(conn: Connection, user_id: str) -> int:
    stmt = select(func.count()).where(CARDS.c.user_id == user_id, CARDS.c.removed_at.is_(None))
    return int(conn.execute(stmt).scalar() or 0)


def add_card(conn: Connection, new: NewCard) -> bool:
    """Insert the card; False when an active card of the same fingerprint (or the same card)
    is there already: a concurrent attach of the same card won the race."""
    inserted = conn.execute(
        insert(CARDS).values(**new.__dict__).on_conflict_do_nothing().returning(CARDS.c.user_id)
    )
    return inserted.first() is not None


def default_card(conn: Connection, user_id: str) -> str | None:
    found = conn.execute(
        select(CARDS.c.stripe_card_id).where(
            CARDS.c.user_id == user_id, CARDS.c.is_default, CARDS.c.removed_at.is_(None)
        )
    ).scalar()
    return str(found) if found is not None else None


def make_default(conn: Connection, user_id: str, card_id: str) -> str | None:
    """Flip the user's default card in Postgres; returns the previous default's id."""
    previous = default_card(conn, user_id)
    if previous == card_id:
        return card_id
    if previous is not None:
        # First, and in its own statement: the one-default index must never see two.
        conn.execute(
            update(CARDS).where(CARDS.c.stripe_card_id == previous).values(is_default=False)
        )
    conn.execute(
        update(CARDS)
        .where(CARDS.c.stripe_card_id == card_id, CARDS.c.removed_at.is_(None))
        .values(is_default=True)
    )
    return previous


def mark_removed(conn: Connection, card_id: str, moment: datetime) -> None:
    """The card is gone from Stripe: not the default any more, removed (once)."""
    conn.execute(
        update(CARDS)
        .where(CARDS.c.stripe_card_id == card_id)
        .values(is_default=False, removed_at=func.coalesce(CARDS.c.removed_at, moment))
    )
