"""charge_requested: validate, record a pending charge, charge once, record the outcome.

A charge is the hot path (the one message an upstream app sends at Stripe's rate), so its
transactions use prepared Core statements on a plain connection: the ORM's identity map,
loads and flushes cost more CPU here than everything else the worker does per charge."""

from __future__ import annotations

import enum
from typing import Any, cast

from sqlalchemy import Connection, Table, and_, bindparam, select, update
from sqlalchemy.dialects.postgresql import insert

from db.models import Card, Charge, ChargeStatus, Customer
from tasks.context import Context
from tasks.errors import CardDeclined, PermanentError, PrerequisiteMissing, StripeNotFound
from tasks.ledger import STARTED
from tasks.messages import ChargeRequested
from tasks.money import check_charge_amount


class Point(enum.StrEnum):
    STARTED = STARTED
    # A pending charges row exists and the charge may have reached Stripe: repeat the
    # create with the same key; Stripe's replay tells what happened.
    CHARGING = "charge_creating"


_customers = cast(Table, Customer.__table__)
_cards = cast(Table, Card.__table__)
_charges = cast(Table, Charge.__table__)
_SOURCE = (
    _customers.c.stripe_customer_id,
    _cards.c.stripe_card_id,
    _cards.c.user_id,
    _cards.c.removed_at,
)
# The user's customer and the named card (whoever's it is: checked below), in one query.
_NAMED_CARD = (
    select(*_SOURCE)
    .select_from(_customers.outerjoin(_cards, _cards.c.stripe_card_id == bindparam("card_id")))
    .where(_customers.c.user_id == bindparam("user_id"))
)
# The user's customer and active default card, in one query.
_DEFAULT_CARD = (
    select(*_SOURCE)
    .select_from(
        _customers.outerjoin(
            _cards,
            and_(
                _cards.c.user_id == _customers.c.user_id,
                _cards.c.is_default,
                _cards.c.removed_at.is_(None),
            ),
        )
    )
    .where(_customers.c.user_id == bindparam("user_id"))
)
_PENDING = insert(_charges).values(
    event_id=bindparam("event_id"),
    user_id=bindparam("user_id"),
    amount=bindparam("amount"),
    currency=bindparam("currency"),
    stripe_card_id=bindparam("card_id"),
    status=ChargeStatus.PENDING,
)
_OUTCOME = (
    update(_charges)
    .where(_charges.c.event_id == bindparam("b_event_id"))
    .values(
        status=bindparam("status"),
        stripe_charge_id=bindparam("charge_id"),
        failure_code=bindparam("failure_code"),
        decline_code=bindparam("decline_code"),
        failure_message=bindparam("failure_message"),
    )
)


def charge_requested(ctx: Context, msg: ChargeRequested) -> None:
    """Charge the named (or default) card of the user exactly once."""
    check_charge_amount(msg.amount, msg.currency)
    if ctx.point != Point.CHARGING:
        with ctx.core_tx() as conn:
            customer_id, card_id = _source(conn, msg)
            # The lease check first: a run that lost the event writes nothing.
            ctx.begin_write(conn, Point.CHARGING, customer_id=customer_id, card_id=card_id)
            conn.execute(
                _PENDING,
                {
                    "event_id": msg.event_id,
                    "user_id": msg.user_id,
                    "amount": msg.amount,
                    "currency": msg.currency,
                    "card_id": card_id,
                },
            )
    card_id = ctx.progress["card_id"]
    customer_id = ctx.progress["customer_id"]
    try:
        outcome = None
        if ctx.key_may_have_expired():
            outcome = ctx.gateway.find_charge(customer_id=customer_id, event_id=msg.event_id)
        outcome = outcome or ctx.gateway.create_charge(
            ctx.key("charge"),
            customer_id=customer_id,
            card_id=card_id,
            amount=msg.amount,
            currency=msg.currency,
            description=msg.description,
            metadata=msg.stripe_metadata(msg.metadata),
        )
    except CardDeclined as declined:
        _record_failure(ctx, msg, declined, declined.decline_code, declined.charge_id)
        return
    except StripeNotFound as missing:
        _record_failure(ctx, msg, PermanentError(missing.message, code="card_not_found"))
        return
    except PermanentError as error:
        _record_failure(ctx, msg, error)
        return
    result = {
        "charge_id": outcome.charge_id,
        "amount": msg.amount,
        "currency": msg.currency,
        "card_id": card_id,
        "status": outcome.status,
    }
    with ctx.core_tx() as conn:
        if outcome.status == "failed":
            refused = PermanentError(
                outcome.failure_message or "card declined", code="card_declined"
            )
            ctx.fail(conn, refused, {**result, "decline_code": outcome.decline_code})
            _record_charge(
                conn,
                msg.event_id,
                ChargeStatus.FAILED,
                charge_id=outcome.charge_id,
                failure_code=outcome.failure_code or "card_declined",
                decline_code=outcome.decline_code,
                failure_message=outcome.failure_message,
            )
        else:
            ctx.succeed(conn, result)
            _record_charge(conn, msg.event_id, ChargeStatus.SUCCEEDED, charge_id=outcome.charge_id)


def _source(conn: Connection, msg: ChargeRequested) -> tuple[str, str]:
    """The Stripe customer and card to charge.

    Raises:
        PrerequisiteMissing: the user has no customer, or the card is not known yet.
        PermanentError: `card_not_found` when the card is another user's, or removed.
    """
    if msg.card_id is not None:
        query, params = _NAMED_CARD, {"user_id": msg.user_id, "card_id": msg.card_id}
    else:
        query, params = _DEFAULT_CARD, {"user_id": msg.user_id}
    row = conn.execute(query, params).one_or_none()
    if row is None:
        raise PrerequisiteMissing(
            f"user {msg.user_id!r} has no customer yet (user_registered not processed)",
            code="customer_not_found",
        )
    if row.stripe_card_id is None:
        if msg.card_id is None:
            raise PrerequisiteMissing(
                f"user {msg.user_id!r} has no default card yet", code="card_not_found"
            )
        raise PrerequisiteMissing(
            f"card {msg.card_id!r} is not known yet (card_token_received not processed)",
            code="card_not_found",
        )
    if row.user_id != msg.user_id:
        raise PermanentError(f"card {msg.card_id!r} does not belong to user", code="card_not_found")
    if row.removed_at is not None:
        raise PermanentError(f"card {msg.card_id!r} has been removed", code="card_not_found")
    return str(row.stripe_customer_id), str(row.stripe_card_id)


def _record_charge(conn: Connection, event_id: str, status: ChargeStatus, **fields: Any) -> None:
    """Write the outcome to the pending charges row (which exists since CHARGING)."""
    params = {
        "charge_id": None,
        "failure_code": None,
        "decline_code": None,
        "failure_message": None,
        **fields,
        "b_event_id": event_id,
        "status": status,
    }
    if conn.execute(_OUTCOME, params).rowcount != 1:
        raise RuntimeError(f"charge {event_id!r} has no pending row")  # a broken invariant


def _record_failure(
    ctx: Context,
    msg: ChargeRequested,
    error: PermanentError,
    decline_code: str | None = None,
    charge_id: str | None = None,
) -> None:
    failure_code = error.failure_code if isinstance(error, CardDeclined) else error.code
    with ctx.core_tx() as conn:
        result = {
            "decline_code": decline_code,
            "failure_code": failure_code,
            "charge_id": charge_id,
        }
        ctx.fail(conn, error, result)
        _record_charge(
            conn,
            msg.event_id,
            ChargeStatus.FAILED,
            charge_id=charge_id,
            failure_code=failure_code,
            decline_code=decline_code,
            failure_message=error.message,
        )
