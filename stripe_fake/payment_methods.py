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
    stamp,
    to_metadata,
)
from .localstripe_ext import res

PaymentMethod = res.PaymentMethod
Card = res.Card
Customer = res.Customer

# https://docs.stripe.com/api/payment_methods/attach answers nothing on
# these; the messages are Stripe's as public integrations record them. The
# codes are the error-codes page's (https://docs.stripe.com/error-codes)
# `payment_method_unexpected_state`: "The provided payment method's state was
# incompatible with the operation you were trying to perform" -- chosen from
# that page, not seen in a recorded answer.
ALREADY_ATTACHED = "The payment method you provided has already been attached to a customer."
NOT_ATTACHED = (
    "The payment method you provided is not attached to a customer so detachment is impossible."
)
USED_UP = (
    "The provided PaymentMethod was previously used with a PaymentIntent without Customer "
    "attachment, shared with a connected account without Customer attachment, or was detached "
    "from a Customer. It may not be used again. To use a PaymentMethod multiple times, you must "
    "attach it to a Customer first."
)
UNEXPECTED_STATE = "payment_method_unexpected_state"


def not_customers(pm_id: str, param: str) -> StripeError:
    """A PaymentMethod named for a customer it is not attached to (Stripe's
    message; the code is our assumption)."""
    return StripeError(
        400,
        f"The customer does not have a payment method with the ID {pm_id}. "
        "The payment method must be attached to the customer.",
        "resource_missing",
        param,
    )


def _billing_details(given: Any) -> dict[str, Any]:
    given = given if isinstance(given, dict) else {}
    address = given.get("address") if isinstance(given.get("address"), dict) else {}
    fields = ("city", "country", "line1", "line2", "postal_code", "state")
    return {
        "address": {f: address.get(f) for f in fields},
        "email": given.get("email"),
        "name": given.get("name"),
        "phone": given.get("phone"),
        "tax_id": given.get("tax_id"),
    }


def _card_fields(number: str, exp_month: int, exp_year: int, cvc_given: bool) -> dict[str, Any]:
    brand = cards.brand_of(number)
    return {
        "brand": brand,
        "checks": {
            "address_line1_check": None,
            "address_postal_code_check": None,
            "cvc_check": "unchecked" if cvc_given else None,
        },
        "country": "US",  # every test card but the by-country ones is US
        # Stripe's display_brand spells a few brands out (american_express,
        # diners_club, ...); an assumption beyond the plain brand.
        "display_brand": {"amex": "american_express", "diners": "diners_club"}.get(brand, brand),
        "exp_month": exp_month,
        "exp_year": exp_year,
        # localstripe's fingerprint (first 16 hex of sha1(number)), the one
        # its tokens and cards get: the same card is the same fingerprint
        # whichever API it came through, as on Stripe.
        "fingerprint": res.fingerprint(number),
        "funding": cards.card_for(number).funding,
        "generated_from": None,
        "last4": number[-4:],
        "networks": {"available": [brand], "preferred": None},
        "regulated_status": "unregulated",
        "three_d_secure_usage": {"supported": True},
        "wallet": None,
    }


def new_card_payment_method(
    number: str,
    exp_month: int,
    exp_year: int,
    cvc_given: bool = True,
    billing_details: Any = None,
    metadata: dict[str, str] | None = None,
) -> Any:
    """Store a new card PaymentMethod (localstripe's class, our fields)."""
    pm = PaymentMethod.__new__(PaymentMethod)
    res.StripeObject.__init__(pm)  # id, created, livemode, stored
    stamp(pm)
    pm._card_number = number
    pm.type = "card"
    pm.allow_redisplay = "unspecified"
    pm.billing_details = _billing_details(billing_details)
    pm.card = _card_fields(number, exp_month, exp_year, cvc_given)
    pm.customer = None
    pm.customer_account = None
    pm.metadata = metadata or {}
    pm._used_up = False
    pm._set_up_off_session = False
    return pm


def _from_test_id(pm_id: str) -> Any | None:
    """Stripe's test PaymentMethod ids are templates: every use (retrieve,
    attach, confirm) gets a new PaymentMethod with its own pm_ id, a copy of
    the test card -- what Stripe answers in test mode (its objects come back
    with a generated id); the testing page only says to use the ids, so the
    copy-on-every-use part is an assumption."""
    number = cards.TEST_PAYMENT_METHODS.get(pm_id)
    if number is None:
        return None
    year = time.gmtime().tm_year + 3  # any future date, as the testing page says
    return new_card_payment_method(number, 12, year)


def resolve(pm_id: Any, param: str | None = None) -> Any:
    """The PaymentMethod (or legacy Card, usable as one) called `pm_id`."""
    if not isinstance(pm_id, str) or not pm_id:
        raise StripeError(400, "Invalid string: payment_method", None, param or "payment_method")
    obj = _from_test_id(pm_id)
    if obj is None:
        if pm_id.startswith("card_"):
            obj = res.store.get("card:" + pm_id)
        elif pm_id.startswith("pm_"):
            obj = res.store.get("payment_method:" + pm_id)
    if obj is None:
        raise no_such("PaymentMethod", pm_id, param)
    return obj


def render(obj: Any) -> dict[str, Any]:
    """A PaymentMethod as the API shows it; a legacy Card as the
    PaymentMethod Stripe shows for it (its id stays card_...)."""
    if isinstance(obj, PaymentMethod):
        exported: dict[str, Any] = obj._export()
        return exported
    return {
        "id": obj.id,
        "object": "payment_method",
        "allow_redisplay": "unspecified",
        "billing_details": _billing_details({"name": obj.name}),
        "card": _card_fields(obj._card_number, obj.exp_month, obj.exp_year, True),
        "created": obj.created,
        "customer": obj.customer,
        "customer_account": None,
        "livemode": False,
        "metadata": dict(obj.metadata or {}),
        "type": "card",
    }


def number_of(obj: Any) -> str:
    number: str = obj._card_number
    return number


def check_card(obj: Any, **error_context: Any) -> None:
    """The card check Stripe runs when a card is saved to a customer."""
    decline = cards.card_for(number_of(obj)).decline
    if decline is not None and cards.card_for(number_of(obj)).checked_on_attach:
        raise card_error(decline.message, decline.code, decline.decline_code, **error_context)


def attach(pm: Any, customer_id: str) -> None:
    """Attach `pm` to `customer_id`, as POST /v1/payment_methods/{id}/attach.

    Raises:
        StripeError: attached already (to anyone: public integrations handle
            this error after a SetupIntent attached the card to the *same*
            customer), used up, or the card check declines (402).
    """
    if pm.customer is not None:
        raise StripeError(400, ALREADY_ATTACHED, UNEXPECTED_STATE, "payment_method")
    if getattr(pm, "_used_up", False):
        raise StripeError(400, USED_UP, UNEXPECTED_STATE, "payment_method")
    check_card(pm, payment_method=render(pm))
    pm.customer = customer_id


def customer_or_error(customer_id: Any, param: str | None = "customer") -> Any:
    if not isinstance(customer_id, str) or not customer_id:
        raise StripeError(400, "Missing required param: customer.", "parameter_missing", param)
    customer = res.store.get("customer:" + customer_id)
    if customer is None:
        raise no_such("customer", customer_id, param)
    return customer


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


# ---- endpoints ------------------------------------------------------------


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
        pm.billing_details = _billing_details(params["billing_details"])
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


# ---- localstripe's card predicates, from Stripe's test cards ---------------
# Card (legacy sources) and Source delegate to PaymentMethod's, so tokens
# behave as the same numbers do here; non-card types keep localstripe's.

_localstripe_predicates = {
    name: getattr(PaymentMethod, name)
    for name in ("_requires_authentication", "_attaching_is_declined", "_charging_is_declined")
}


def _requires_authentication(self: Any) -> bool:
    if getattr(self, "type", None) != "card":
        return bool(_localstripe_predicates["_requires_authentication"](self))
    auth = cards.card_for(self._card_number).authentication
    if auth == "unless_set_up" and getattr(self, "_set_up_off_session", False):
        return False
    return auth is not None


def _attaching_is_declined(self: Any) -> bool:
    if getattr(self, "type", None) != "card":
        return bool(_localstripe_predicates["_attaching_is_declined"](self))
    profile = cards.card_for(self._card_number)
    return profile.decline is not None and profile.checked_on_attach


def _charging_is_declined(self: Any) -> bool:
    if getattr(self, "type", None) != "card":
        return bool(_localstripe_predicates["_charging_is_declined"](self))
    return cards.card_for(self._card_number).decline is not None


PaymentMethod._requires_authentication = _requires_authentication
PaymentMethod._attaching_is_declined = _attaching_is_declined
PaymentMethod._charging_is_declined = _charging_is_declined

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
