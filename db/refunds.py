"""Statements of the refunds table, and of the charge a refund reads and re-derives, in the
caller's transaction.

Concurrency. Two refunds of one charge must never together exceed it, so whatever decides
an amount (a new pending refund) or writes one (`charges.amount_refunded`) first locks the
charge row (`lock_charge`) and only THEN sums the refunds, in a statement of its own. Under
READ COMMITTED a statement that waited for a row lock re-checks only that row: a sum computed
in the same statement (a subquery) would still see the snapshot from before the wait, and
miss the refund the lock holder has just committed. A new statement, after the lock, takes
a new snapshot and sees it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Connection, ScalarSelect, Table, bindparam, func, select, update
from sqlalchemy.dialects.postgresql import insert

from db.charges import CHARGES
from db.models import Refund, RefundStatus

REFUNDS = cast(Table, Refund.__table__)

_LOCK_CHARGE = (
    select(
        CHARGES.c.event_id, CHARGES.c.user_id, CHARGES.c.status, CHARGES.c.amount,
        CHARGES.c.amount_refunded, CHARGES.c.currency, CHARGES.c.stripe_charge_id,
    )
    .where(CHARGES.c.event_id == bindparam("charge_event_id"))
    .with_for_update()
)  # fmt: skip


def _sum_of(status: RefundStatus) -> ScalarSelect[Any]:
    """The amount of a charge's refunds in `status` (0 when there are none)."""
    return (
        select(func.coalesce(func.sum(REFUNDS.c.amount), 0))
        .where(REFUNDS.c.charge_event_id == bindparam("charge_event_id"))
        .where(REFUNDS.c.status == status)
        .scalar_subquery()
    )


_PENDING_TOTAL = select(_sum_of(RefundStatus.PENDING))
# `amount_refunded` is the sum of the charge's succeeded refunds, never an increment.
_REDERIVE = (
    update(CHARGES)
    .where(CHARGES.c.event_id == bindparam("charge_event_id"))
    .values(amount_refunded=_sum_of(RefundStatus.SUCCEEDED))
    .returning(CHARGES.c.amount_refunded)
)
_ADD_PENDING = insert(REFUNDS).values(
    event_id=bindparam("event_id"),
    user_id=bindparam("user_id"),
    charge_event_id=bindparam("charge_event_id"),
    amount=bindparam("amount"),
    currency=bindparam("currency"),
    reason=bindparam("reason"),
    status=RefundStatus.PENDING,
)
_ROW = select(
    REFUNDS.c.event_id, REFUNDS.c.user_id, REFUNDS.c.charge_event_id,
    REFUNDS.c.stripe_refund_id, REFUNDS.c.amount, REFUNDS.c.currency, REFUNDS.c.reason,
    REFUNDS.c.status, REFUNDS.c.failure_reason,
).where(REFUNDS.c.event_id == bindparam("event_id"))  # fmt: skip


@dataclass(frozen=True)
class RefundableCharge:
    """A charges row as a refund judges it."""

    event_id: str
    user_id: str
    status: str
    amount: int
    amount_refunded: int
    currency: str
    stripe_charge_id: str | None


@dataclass(frozen=True)
class RefundRow:
    event_id: str
    user_id: str
    charge_event_id: str
    stripe_refund_id: str | None
    amount: int
    currency: str
    reason: str | None
    status: str
    failure_reason: str | None


def lock_charge(conn: Connection, charge_event_id: str) -> RefundableCharge | None:
    """The charges row of `charge_event_id`, locked until the transaction ends; None when
    there is none. Every refund of the charge passes here first (see the module's note)."""
    row = conn.execute(_LOCK_CHARGE, {"charge_event_id": charge_event_id}).one_or_none()
    return RefundableCharge(**row._mapping) if row is not None else None


def pending_total(conn: Connection, charge_event_id: str) -> int:
    """The amount of the charge's pending refunds. Lock the charge first (`lock_charge`)."""
    return int(conn.execute(_PENDING_TOTAL, {"charge_event_id": charge_event_id}).scalar_one())


def add_pending(
    conn: Connection,
    *,
    event_id: str,
    user_id: str,
    charge_event_id: str,
    amount: int,
    currency: str,
    reason: str | None,
) -> None:
    """The pending refunds row, written before the refund may reach Stripe, under the
    charge's lock: from its commit on, its amount counts against what remains."""
    params = {
        "event_id": event_id,
        "user_id": user_id,
        "charge_event_id": charge_event_id,
        "amount": amount,
        "currency": currency,
        "reason": reason,
    }
    conn.execute(_ADD_PENDING, params)


def row(conn: Connection, event_id: str) -> RefundRow | None:
    """The refunds row of a refund_requested event; None when it never got one."""
    found = conn.execute(_ROW, {"event_id": event_id}).one_or_none()
    return RefundRow(**found._mapping) if found is not None else None


def record_outcome(
    conn: Connection,
    event_id: str,
    status: RefundStatus,
    *,
    stripe_refund_id: str | None = None,
    failure_reason: str | None = None,
) -> int:
    """Write Stripe's answer to the event's refunds row; returns the charge's
    `amount_refunded`, re-derived from its succeeded refunds in the same transaction."""
    found = row(conn, event_id)
    assert found is not None, f"refund {event_id!r} has no refunds row"
    lock_charge(conn, found.charge_event_id)
    values: dict[str, object] = {"status": status, "failure_reason": failure_reason}
    if stripe_refund_id is not None:
        values["stripe_refund_id"] = stripe_refund_id
    conn.execute(update(REFUNDS).where(REFUNDS.c.event_id == event_id).values(**values))
    return int(conn.execute(_REDERIVE, {"charge_event_id": found.charge_event_id}).scalar_one())


def fail_pending(conn: Connection, event_id: str, failure_reason: str) -> None:
    """A refund that failed before Stripe held it: its pending row (if any) becomes failed,
    and its amount counts against the charge no more."""
    conn.execute(
        update(REFUNDS)
        .where(REFUNDS.c.event_id == event_id, REFUNDS.c.status == RefundStatus.PENDING)
        .values(status=RefundStatus.FAILED, failure_reason=failure_reason)
    )


def amount_refunded(conn: Connection, charge_event_id: str) -> int:
    """The charge's `amount_refunded` as stored."""
    query = select(CHARGES.c.amount_refunded).where(CHARGES.c.event_id == charge_event_id)
    return int(conn.execute(query).scalar_one())
