"""PaymentMethods (type card) as Stripe has them, over localstripe's store.

localstripe's own PaymentMethod accepts 16-digit numbers only, calls every
card a French Visa, knows three test ids (and makes a new object on every
GET of one), attaches any PaymentMethod to any customer and never runs a
card check. Here a PaymentMethod is still localstripe's class (so Customer,
Charge and Invoice code keep finding it), but made and driven by us.
Shapes follow API version 2026-10-28 (stripe-python 16.1's `PaymentMethod`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any

from . import cards
from .common import (
    Params,
    StripeError,
    card_error,
    check_params,
    endpoint,
    merge_metadata,
    no_such,
    objects,
    page,
    to_metadata,
)
from .localstripe_ext import res
from .payment_method_object import (
    ALREADY_ATTACHED,
    NOT_ATTACHED,
    UNEXPECTED_STATE,
    attach,
    billing_details_of,
    customer_or_error,
    new_card_payment_method,
    not_customers,
    render,
    resolve,
)

PaymentMethod = res.PaymentMethod
Card = res.Card


def _exp(card: dict[str, Any], name: str) -> int:
    try:
        return int(card.get(name) or "")
    except ValueError:
        code = "invalid_expiry_month" if name == "exp_month" else "invalid_expiry_year"
        raise card_error(f"Your card's {name.replace('_', ' ')} is invalid.", code, None) from None


def _card_params(card: Any) -> tuple[str, int, int, bool]:
    """(number, exp_month, exp_year, cvc given) from `card[...]`, checked as
    Stripe does on creation: 402 card_error invalid_number / incorrect_number
    / invalid_expiry_month / invalid_expiry_year / invalid_cvc (the codes of
    the testing page's "invalid data" cards)."""
    if not isinstance(card, dict):
        raise StripeError(400, "Missing required param: card.", "parameter_missing", "card")
    if "token" in card:  # card[token]=tok_...: the token's card
        token = res.store.get("token:" + str(card["token"]))
        if token is None:
            raise no_such("token", str(card["token"]), "card[token]")
        c = token.card
        return c._card_number, c.exp_month, c.exp_year, True
    number = re.sub(r"[\s-]", "", str(card.get("number") or ""))
    if not number.isdigit() or not 12 <= len(number) <= 19:
        raise card_error("Your card number is invalid.", "invalid_number", None, param="number")
    if not cards.luhn_ok(number):
        raise card_error("Your card number is incorrect.", "incorrect_number", None, param="number")
    exp_month, exp_year = _exp(card, "exp_month"), _exp(card, "exp_year")
    exp_year += 2000 if exp_year < 100 else 0
    if not 1 <= exp_month <= 12:
        raise card_error(
            "Your card's expiration month is invalid.",
            "invalid_expiry_month",
            None,
            param="exp_month",
        )
    now = time.gmtime()
    if (exp_year, exp_month) < (now.tm_year, now.tm_mon) or exp_year > now.tm_year + 50:
        raise card_error(
            "Your card's expiration year is invalid.", "invalid_expiry_year", None, param="exp_year"
        )
    cvc = card.get("cvc")
    if cvc is not None and not re.fullmatch(r"\d{3,4}", str(cvc)):
        raise card_error("Your card's security code is invalid.", "invalid_cvc", None, param="cvc")
    return number, exp_month, exp_year, cvc is not None


def create(path: Mapping[str, str], params: Params) -> Any:
    """POST /v1/payment_methods (type=card, from card details or card[token])."""
    check_params(params, ("type", "card", "billing_details", "metadata", "allow_redisplay"))
    if params.get("type") != "card":
        raise StripeError(400, "This fake makes card PaymentMethods only.", None, "type")
    number, exp_month, exp_year, cvc = _card_params(params.get("card"))
    return new_card_payment_method(
        number, exp_month, exp_year, cvc, params.get("billing_details"), to_metadata(params)
    )


def retrieve(path: Mapping[str, str], params: Params) -> Any:
    return render(resolve(path["id"]))


def update(path: Mapping[str, str], params: Params) -> Any:
    check_params(params, ("metadata", "billing_details", "allow_redisplay"))
    pm = resolve(path["id"])
    if not isinstance(pm, PaymentMethod):
        raise StripeError(400, "Update a card source through /v1/customers/{id}/sources.")
    if "metadata" in params:
        pm.metadata = merge_metadata(pm.metadata, to_metadata(params))
    if "billing_details" in params:
        pm.billing_details = billing_details_of(params["billing_details"])
    return render(pm)


def attach_endpoint(path: Mapping[str, str], params: Params) -> Any:
    check_params(params, ("customer",), required=("customer",))
    customer = customer_or_error(params["customer"])
    pm = resolve(path["id"])
    if not isinstance(pm, PaymentMethod):  # a card source is attached already
        raise StripeError(400, ALREADY_ATTACHED, UNEXPECTED_STATE, "payment_method")
    attach(pm, customer.id)
    return render(pm)


def detach(path: Mapping[str, str], params: Params) -> Any:
    """POST /v1/payment_methods/{id}/detach; a detached PaymentMethod cannot
    be used again (Stripe's USED_UP message says so)."""
    check_params(params, ())
    pm = resolve(path["id"])
    if not isinstance(pm, PaymentMethod) or pm.customer is None:
        raise StripeError(400, NOT_ATTACHED, UNEXPECTED_STATE, "payment_method")
    customer = res.store.get("customer:" + pm.customer)
    settings = getattr(customer, "invoice_settings", None) or {}
    if settings.get("default_payment_method") == pm.id:
        # Assumption: the customer's default goes with it (an invoice
        # default that is no longer attached could not be charged).
        settings["default_payment_method"] = None
    pm.customer = None
    pm._used_up = True
    return render(pm)


def of_customer(customer_id: str, type_: Any) -> list[Any]:
    """A customer's PaymentMethods, legacy card sources included: Stripe lists
    "all saved compatible payment instruments" through this API
    (https://docs.stripe.com/payments/payment-methods#transitioning)."""
    if type_ not in (None, "card"):
        return []
    customer = customer_or_error(customer_id)
    found = [pm for pm in objects("payment_method") if pm.customer == customer.id]
    found += [s for s in customer.sources._list if isinstance(s, Card)]
    return found


class _Rendered:
    """A listed object exported as a PaymentMethod (for legacy cards)."""

    def __init__(self, obj: Any) -> None:
        self.id, self.created, self._seq = obj.id, obj.created, getattr(obj, "_seq", -1)
        self._obj = obj

    def _export(self, expand: Any = None) -> dict[str, Any]:
        return render(self._obj)


def list_all(path: Mapping[str, str], params: Params) -> Any:
    """GET /v1/payment_methods?customer=&type= (without a customer Stripe
    lists Treasury PaymentMethods: none here)."""
    check_params(params, ("customer", "type", "limit", "starting_after", "ending_before"))
    items = of_customer(params["customer"], params.get("type")) if params.get("customer") else []
    return page("/v1/payment_methods", [_Rendered(o) for o in items], params)


def list_for_customer(path: Mapping[str, str], params: Params) -> Any:
    """GET /v1/customers/{id}/payment_methods."""
    check_params(params, ("type", "limit", "starting_after", "ending_before", "allow_redisplay"))
    items = of_customer(path["id"], params.get("type"))
    url = f"/v1/customers/{path['id']}/payment_methods"
    return page(url, [_Rendered(o) for o in items], params)


def retrieve_for_customer(path: Mapping[str, str], params: Params) -> Any:
    """GET /v1/customers/{id}/payment_methods/{payment_method}."""
    customer = customer_or_error(path["id"], None)
    pm = resolve(path["payment_method"])
    if pm.customer != customer.id:
        raise no_such("PaymentMethod", path["payment_method"])
    return render(pm)


def check_default_payment_method(customer_id: str, data: Params) -> None:
    """POST /v1/customers/{id} with invoice_settings[default_payment_method]:
    the PaymentMethod must be attached to that customer."""
    settings = data.get("invoice_settings")
    wanted = settings.get("default_payment_method") if isinstance(settings, dict) else None
    if not wanted:
        return
    pm = res.store.get("payment_method:" + str(wanted))
    if pm is None or pm.customer != customer_id:
        raise not_customers(str(wanted), "invoice_settings[default_payment_method]")


ROUTES = {
    ("POST", "/v1/payment_methods"): endpoint(create),
    ("GET", "/v1/payment_methods"): endpoint(list_all),
    ("GET", "/v1/payment_methods/{id}"): endpoint(retrieve),
    ("POST", "/v1/payment_methods/{id}"): endpoint(update),
    ("POST", "/v1/payment_methods/{id}/attach"): endpoint(attach_endpoint),
    ("POST", "/v1/payment_methods/{id}/detach"): endpoint(detach),
    ("GET", "/v1/customers/{id}/payment_methods"): endpoint(list_for_customer),
    ("GET", "/v1/customers/{id}/payment_methods/{payment_method}"): endpoint(retrieve_for_customer),
}
