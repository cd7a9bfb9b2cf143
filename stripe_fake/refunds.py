"""Refunds as Stripe documents them (https://docs.stripe.com/api/refunds).

localstripe's Refund takes no `reason`, lets refunds add up past the charge
amount and, for a PaymentIntent, needs localstripe's own kind. Here: one of
`charge` / `payment_intent`, `reason` one of Stripe's three, partial refunds
that accumulate in the charge's `amount_refunded` / `refunded`, and Stripe's
400s once nothing (`charge_already_refunded`) or not enough
(`amount_too_large`) remains. Refunds succeed at once (status "succeeded").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .common import (
    Params,
    StripeError,
    check_params,
    choice,
    endpoint,
    no_such,
    objects,
    page,
    stamp,
    to_amount,
    to_metadata,
)
from .localstripe_ext import res

Refund = res.Refund
REASONS = ("duplicate", "fraudulent", "requested_by_customer")
# https://docs.stripe.com/currencies: amounts in these have no minor unit.
ZERO_DECIMAL = frozenset("bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split())
_SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£"}


def _money(amount: int, currency: str) -> str:
    """An amount as Stripe's refund messages write it ("$25.00")."""
    value = str(amount) if currency in ZERO_DECIMAL else f"{amount / 100:.2f}"
    symbol = _SYMBOLS.get(currency)
    return f"{symbol}{value}" if symbol else f"{value} {currency.upper()}"


def _charge_to_refund(params: Params) -> Any:
    charge_id, pi_id = params.get("charge"), params.get("payment_intent")
    if charge_id and pi_id:
        # Assumption: Stripe's wording; it takes one or the other.
        raise StripeError(400, "You can only pass one of charge or payment_intent.", None, "charge")
    if pi_id:
        pi = res.store.get("payment_intent:" + str(pi_id))
        if pi is None:
            raise no_such("payment_intent", str(pi_id), "payment_intent")
        charge = pi.latest_charge
        if isinstance(charge, str):
            charge = res.store.get("charge:" + charge)
        if pi.status != "succeeded" or charge is None:
            # Assumption: the wording (Stripe refuses a PaymentIntent that has
            # no successful charge).
            raise StripeError(
                400,
                f"This PaymentIntent ({pi.id}) does not have a successful charge to refund.",
                None,
                "payment_intent",
            )
        return charge
    if not charge_id:
        raise StripeError(
            400,
            "One of the following params should be provided for this request: "
            "payment_intent or charge.",
            "parameter_missing",
        )
    charge = res.store.get("charge:" + str(charge_id))
    if charge is None:
        raise no_such("charge", str(charge_id), "charge")
    if charge.status != "succeeded":
        raise StripeError(400, "Cannot refund a failed payment.", None, "charge")
    return charge


def create(path: Mapping[str, str], params: Params) -> Any:
    """POST /v1/refunds."""
    check_params(params, ("charge", "payment_intent", "amount", "reason", "metadata"))
    reason = choice(params, "reason", REASONS, None)
    amount = to_amount(params)
    metadata = to_metadata(params)
    charge = _charge_to_refund(params)
    remaining = charge.amount - charge.amount_refunded
    if remaining <= 0:
        # Error codes page: "The charge you're attempting to refund has
        # already been refunded." (code charge_already_refunded).
        raise StripeError(
            400, f"Charge {charge.id} has already been refunded.", "charge_already_refunded"
        )
    if amount is not None and amount > remaining:
        # The messages are Stripe's as recorded by public integrations; the
        # code is amount_too_large ("The specified amount is greater than the
        # maximum amount allowed", error codes page).
        what = "charge amount" if charge.amount_refunded == 0 else "unrefunded amount on charge"
        raise StripeError(
            400,
            f"Refund amount ({_money(amount, charge.currency)}) is greater than {what} "
            f"({_money(remaining, charge.currency)})",
            "amount_too_large",
            "amount",
        )
    refund = Refund(charge=charge.id, amount=amount or remaining, metadata=metadata)
    stamp(refund)
    refund.payment_intent = charge.payment_intent
    refund.reason = reason
    refund.description = None
    refund.destination_details = {"card": {"type": "refund"}, "type": "card"}
    refund.receipt_number = None
    refund.source_transfer_reversal = None
    refund.transfer_reversal = None
    return refund


def list_all(path: Mapping[str, str], params: Params) -> Any:
    """GET /v1/refunds, by `charge` or `payment_intent`, newest first."""
    check_params(params, ("charge", "payment_intent", "limit", "starting_after", "ending_before"))
    items = objects("refund")
    for field in ("charge", "payment_intent"):
        if params.get(field):
            items = [r for r in items if getattr(r, field, None) == params[field]]
    return page("/v1/refunds", items, params)


ROUTES = {
    ("POST", "/v1/refunds"): endpoint(create),
    ("GET", "/v1/refunds"): endpoint(list_all),
}
