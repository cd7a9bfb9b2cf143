"""What the refund tests share: a succeeded charge made through charge_requested, and the
refund message of it. The charges are made with PAYWORKER_CHARGE_API=charges (the test
modules pin it): a refund refunds by Stripe charge id, whichever API made the charge."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tasks.messages import ChargeRequested, RefundRequested
from tests.inprocess._support import Deliveries, Rows

CHARGED = 2000


@dataclass(frozen=True)
class Paid:
    """A charge_requested that succeeded: its event and Stripe's charge."""

    event_id: str
    user_id: str
    charge_id: str


def paid_charge(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    rows: Rows,
    customer: Callable[[str], str],
    card: Callable[..., str],
    *,
    user: str = "user",
    amount: int = CHARGED,
) -> Paid:
    """A user with a card and a succeeded charge of `amount` USD cents."""
    user_id = ids(user)
    card(user_id, customer(user_id))
    msg = ChargeRequested(
        event_id=ids(f"charge-{user}"), user_id=user_id, amount=amount, currency="usd"
    )
    outcome = deliveries.deliver(msg)
    assert outcome["status"] == "succeeded", outcome
    charge = rows.charge(msg.event_id)
    assert charge is not None and charge["stripe_charge_id"] is not None
    return Paid(msg.event_id, user_id, charge["stripe_charge_id"])


def refund_requested(
    ids: Callable[[str], str],
    paid: Paid,
    name: str = "refund",
    *,
    amount: int | None = None,
    user_id: str | None = None,
) -> RefundRequested:
    return RefundRequested(
        event_id=ids(name), user_id=user_id or paid.user_id, charge_event_id=paid.event_id,
        amount=amount, reason="requested_by_customer", metadata={"ticket": "T-7"},
    )  # fmt: skip
