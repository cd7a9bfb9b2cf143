"""PaymentMethods (type card) as Stripe has them, over localstripe's store.

localstripe's own PaymentMethod accepts 16-digit numbers only, calls every
card a French Visa, knows three test ids (and makes a new object on every
GET of one), attaches any PaymentMethod to any customer and never runs a
card check. Here a PaymentMethod is still localstripe's class (so Customer,
Charge and Invoice code keep finding it), but made and driven by us.
Shapes follow API version 2026-10-28 (stripe-python 16.1's `PaymentMethod`).

The object, its lookup, rendering, card check and attach; the HTTP endpoints
are payment_methods.py, localstripe's card predicates
payment_method_predicates.py.
"""

from __future__ import annotations

import time
from typing import Any

from . import cards
from .common import StripeError, card_error, no_such, stamp
from .localstripe_ext import res

PaymentMethod = res.PaymentMethod

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


def billing_details_of(given: Any) -> dict[str, Any]:
    """`billing_details` as the API shows it, from what was given (or nothing)."""
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
    pm.billing_details = billing_details_of(billing_details)
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
        "billing_details": billing_details_of({"name": obj.name}),
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


def check_usable(pm: Any, customer: str | None) -> None:
    """Stripe's checks on a PaymentMethod named for a PaymentIntent or SetupIntent."""
    if getattr(pm, "_used_up", False):
        raise StripeError(400, USED_UP, UNEXPECTED_STATE, "payment_method")
    owner = pm.customer
    if owner is not None and owner != customer:
        # A card source is always some customer's; a PaymentMethod attached to
        # one can only pay for that customer.
        raise not_customers(pm.id, "payment_method")


def customer_or_error(customer_id: Any, param: str | None = "customer") -> Any:
    if not isinstance(customer_id, str) or not customer_id:
        raise StripeError(400, "Missing required param: customer.", "parameter_missing", param)
    customer = res.store.get("customer:" + customer_id)
    if customer is None:
        raise no_such("customer", customer_id, param)
    return customer
