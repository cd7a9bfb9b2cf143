"""Charges: the ones PaymentIntents make, and Stripe's decline codes on the
legacy ones localstripe makes.

A PaymentIntent's charge is a localstripe Charge (so GET /v1/charges,
refunds and balance transactions keep working) with the fields API version
2026-10-28 has and localstripe lacks: `payment_intent`, `payment_method`,
`payment_method_details`, `outcome`, `amount_captured`, and on failure
`failure_code` / `failure_message` / `outcome.reason` (the decline code).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import cards
from .common import Params, card_error, check_params, endpoint, no_such, stamp
from .localstripe_ext import res

Charge = res.Charge


def _decline_of(charge: Any) -> cards.Decline:
    """The decline a failed localstripe charge stands for (its card's)."""
    source = res.PaymentMethod._api_retrieve(charge.payment_method)
    number = getattr(source, "_card_number", "")
    return cards.card_for(number).decline or cards.GENERIC_DECLINE


def _outcome(decline: cards.Decline | None) -> dict[str, Any]:
    if decline is None:
        return {
            "network_status": "approved_by_network",
            "reason": None,
            "risk_level": "normal",
            "seller_message": "Payment complete.",
            "type": "authorized",
        }
    return {
        "network_status": "declined_by_network",
        "reason": decline.decline_code,
        "risk_level": "normal",
        "seller_message": f"The bank returned the decline code `{decline.decline_code}`.",
        "type": "issuer_declined",
    }


def _fail(charge: Any, decline: cards.Decline) -> None:
    charge.status = "failed"
    charge.failure_code = decline.code
    charge.failure_message = decline.message
    charge.outcome = _outcome(decline)
    charge._decline = decline


def new_charge(pi: Any, pm: Any, rendered_pm: dict[str, Any], decline: cards.Decline | None) -> Any:
    """The charge a PaymentIntent's confirmation makes: succeeded (with its
    balance transaction) or failed with `decline`."""
    charge = Charge(
        amount=pi.amount,
        currency=pi.currency,
        customer=pi.customer,
        source=pm.id,
        description=pi.description,
        # Stripe copies the PaymentIntent's metadata to its charges.
        metadata=dict(pi.metadata),
    )
    stamp(charge)
    charge.payment_intent = pi.id
    charge.receipt_email = pi.receipt_email
    charge.billing_details = rendered_pm["billing_details"]
    card = rendered_pm["card"]
    charge.payment_method_details = {
        "type": "card",
        "card": {
            key: card[key]
            for key in (
                "brand",
                "checks",
                "country",
                "exp_month",
                "exp_year",
                "fingerprint",
                "funding",
                "last4",
            )
        }
        | {"network": card["brand"], "three_d_secure": None, "wallet": None},
    }
    charge.disputed = False
    if decline is None:
        charge._authorized = True
        charge._initialize_charge()  # succeeded, with a balance transaction
        charge.outcome = _outcome(None)
        charge.amount_captured = charge.amount
    else:
        charge._authorized = False
        _fail(charge, decline)
        charge.amount_captured = 0
    return charge


# ---- legacy POST /v1/charges: Stripe's codes on declines ----------------------


def _set_auth_failure(self: Any) -> None:
    """Charge._set_auth_failure: the card's own code and message (localstripe:
    always card_declined, "Your card was declined.", no decline code)."""
    _fail(self, _decline_of(self))


def _raise_failure(self: Any) -> None:
    decline = getattr(self, "_decline", None) or _decline_of(self)
    raise card_error(decline.message, decline.code, decline.decline_code, charge=self.id)


Charge._set_auth_failure = _set_auth_failure
Charge._raise_failure = _raise_failure


def list_all(path: Mapping[str, str], params: Params) -> Any:
    """GET /v1/charges, also by `payment_intent` (localstripe: customer and
    created only). Order stays localstripe's: oldest first."""
    check_params(params, ("customer", "created", "payment_intent", "limit", "starting_after"))
    pi_id = params.pop("payment_intent", None)
    params.pop("expand", None)
    if pi_id is not None and res.store.get("payment_intent:" + str(pi_id)) is None:
        raise no_such("payment_intent", str(pi_id), "payment_intent")
    listing = Charge._api_list_all("/v1/charges", **params)
    if pi_id is not None:
        listing._list = [c for c in listing._list if c.payment_intent == pi_id]
    return listing


ROUTES = {("GET", "/v1/charges"): endpoint(list_all)}
