"""Statements of the charges table and of the charge hot path, in the caller's transaction.

A charge is the one message an upstream app sends at Stripe's rate, so its statements are
built once (SQLAlchemy compiles each once) and run on a plain connection: the ORM's
identity map, loads and flushes cost more CPU here than everything else the worker does
per charge."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, Interval, Table, and_, bindparam, func, select, update
from sqlalchemy.dialects.postgresql import insert

from db.models import Charge, ChargeStatus
from db.users import CARDS, CUSTOMERS

CHARGES = cast(Table, Charge.__table__)

_SOURCE = (
    CUSTOMERS.c.stripe_customer_id.label("customer_id"),
    CARDS.c.stripe_card_id.label("card_id"),
    CARDS.c.user_id.label("card_user_id"),
    CARDS.c.removed_at.label("card_removed_at"),
)
# The user's customer and the named card (whoever's it is: the caller checks), in one query.
_NAMED_CARD = (
    select(*_SOURCE)
    .select_from(CUSTOMERS.outerjoin(CARDS, CARDS.c.stripe_card_id == bindparam("card_id")))
    .where(CUSTOMERS.c.user_id == bindparam("user_id"))
)
# The user's customer and active default card, in one query.
_DEFAULT_CARD = (
    select(*_SOURCE)
    .select_from(
        CUSTOMERS.outerjoin(
            CARDS,
            and_(
                CARDS.c.user_id == CUSTOMERS.c.user_id,
                CARDS.c.is_default,
                CARDS.c.removed_at.is_(None),
            ),
        )
    )
    .where(CUSTOMERS.c.user_id == bindparam("user_id"))
)
# A plain INSERT: ON CONFLICT's speculative insertion costs Postgres measurably more per
# charge. The row cannot exist yet: it is written with the event's move to charge_creating.
_PENDING = insert(CHARGES).values(
    event_id=bindparam("event_id"),
    user_id=bindparam("user_id"),
    amount=bindparam("amount"),
    currency=bindparam("currency"),
    stripe_card_id=bindparam("card_id"),
    status=ChargeStatus.PENDING,
)
_OUTCOME = (
    update(CHARGES)
    .where(CHARGES.c.event_id == bindparam("b_event_id"))
    .values(
        status=bindparam("status"),
        stripe_charge_id=bindparam("charge_id"),
        failure_code=bindparam("failure_code"),
        decline_code=bindparam("decline_code"),
        failure_message=bindparam("failure_message"),
        # Once known, a PaymentIntent id stays: an outcome without one keeps it.
        payment_intent_id=func.coalesce(
            bindparam("payment_intent_id"), CHARGES.c.payment_intent_id
        ),
    )
)


# A user's charges that count against PAYWORKER_USER_CHARGE_LIMIT: created within the
# window and not failed (pending, waiting for the customer's authentication, succeeded).
# `now()` is the transaction's start, as in the rows' created_at.
_RECENT = (
    select(func.count())
    .select_from(CHARGES)
    .where(
        CHARGES.c.user_id == bindparam("user_id"),
        CHARGES.c.status.in_(
            [ChargeStatus.PENDING, ChargeStatus.REQUIRES_ACTION, ChargeStatus.SUCCEEDED]
        ),
        CHARGES.c.created_at > func.now() - bindparam("window", type_=Interval()),
    )
)


@dataclass(frozen=True)
class Source:
    """The customer of a user and a card it names (or its default): None where missing."""

    customer_id: str
    card_id: str | None
    card_user_id: str | None
    card_removed_at: datetime | None


@dataclass(frozen=True)
class ChargeRow:
    event_id: str
    user_id: str
    stripe_card_id: str
    status: str
    stripe_charge_id: str | None
    failure_code: str | None
    decline_code: str | None
    failure_message: str | None
    payment_intent_id: str | None


def source(conn: Connection, user_id: str, card_id: str | None) -> Source | None:
    """The user's customer and the named (or default) card; None when there is no customer."""
    if card_id is not None:
        query, params = _NAMED_CARD, {"user_id": user_id, "card_id": card_id}
    else:
        query, params = _DEFAULT_CARD, {"user_id": user_id}
    row = conn.execute(query, params).one_or_none()
    return Source(**row._mapping) if row is not None else None


def recent_count(conn: Connection, user_id: str, window_seconds: int) -> int:
    """The user's pending, requires_action and succeeded charges created in the last
    `window_seconds`. Take
    the user's lock first (db/users.py lock_user) when the count decides a new charge: two
    concurrent charges then count one after the other, each seeing the other's row."""
    params = {"user_id": user_id, "window": timedelta(seconds=window_seconds)}
    return int(conn.execute(_RECENT, params).scalar_one())


def add_pending(
    conn: Connection, *, event_id: str, user_id: str, amount: int, currency: str, card_id: str
) -> None:
    """The pending charges row, written before the charge may reach Stripe."""
    params = {
        "event_id": event_id,
        "user_id": user_id,
        "amount": amount,
        "currency": currency,
        "card_id": card_id,
    }
    conn.execute(_PENDING, params)


def record_outcome(conn: Connection, event_id: str, status: ChargeStatus, **fields: Any) -> int:
    """Write an outcome to the event's charges row; returns the rows written (0: none yet).
    `payment_intent_id` None keeps the one recorded."""
    params = {
        "charge_id": None,
        "payment_intent_id": None,
        "failure_code": None,
        "decline_code": None,
        "failure_message": None,
        **fields,
        "b_event_id": event_id,
        "status": status,
    }
    return int(conn.execute(_OUTCOME, params).rowcount)


def locked(conn: Connection, event_id: str) -> ChargeRow | None:
    """The event's charges row, locked until the transaction ends."""
    row = conn.execute(
        select(
            CHARGES.c.event_id, CHARGES.c.user_id, CHARGES.c.stripe_card_id, CHARGES.c.status,
            CHARGES.c.stripe_charge_id, CHARGES.c.failure_code, CHARGES.c.decline_code,
            CHARGES.c.failure_message, CHARGES.c.payment_intent_id,
        )
        .where(CHARGES.c.event_id == event_id)
        .with_for_update()
    ).first()  # fmt: skip
    return ChargeRow(**row._mapping) if row is not None else None


def reset_to_pending(conn: Connection, event_id: str) -> None:
    """A new generation of a failed (or canceled) charge: its row goes back to pending,
    outcome and PaymentIntent cleared (the new generation makes its own)."""
    conn.execute(
        update(CHARGES)
        .where(CHARGES.c.event_id == event_id)
        .values(
            status=ChargeStatus.PENDING,
            stripe_charge_id=None,
            failure_code=None,
            decline_code=None,
            failure_message=None,
            payment_intent_id=None,
        )
    )
