"""PaymentIntents as Stripe documents them, off-session and 3-D Secure included.

localstripe's PaymentIntent (kept for the PaymentIntents its invoices make)
rejects `description`, `off_session` has no effect, confirming with a
`payment_method` is a 500, a declined card gives no decline code and
`latest_charge` is a whole object. Ours follow API version 2026-10-28
(https://docs.stripe.com/api/payment_intents): statuses
requires_payment_method -> requires_action -> succeeded | canceled,
`latest_charge` an id, and a failed confirmation answers 402 card_error with
the PaymentIntent (status requires_payment_method, `payment_method` null,
`last_payment_error` set) in `error.payment_intent`.

Not modelled: capture_method=manual (400 here), other payment method types,
minimum/maximum amounts and currency checks, webhooks for these objects.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from . import payment_method_object
from .common import (
    Params,
    StripeError,
    check_params,
    choice,
    endpoint,
    merge_metadata,
    no_such,
    objects,
    page,
    to_amount,
    to_bool,
    to_metadata,
)
from .localstripe_ext import res
from .payment_intent_confirm import authenticate, confirm_with
from .payment_intent_object import FakePaymentIntent, ours

LocalstripePaymentIntent = res.PaymentIntent

CANCELABLE = (
    "requires_payment_method",
    "requires_capture",
    "requires_confirmation",
    "requires_action",
    "processing",
)
CONFIRMABLE = ("requires_payment_method", "requires_confirmation", "requires_action")
UNEXPECTED_STATE = "payment_intent_unexpected_state"

CREATE_PARAMS = (
    "amount",
    "currency",
    "customer",
    "payment_method",
    "payment_method_types",
    "confirm",
    "off_session",
    "metadata",
    "description",
    "receipt_email",
    "setup_future_usage",
    "error_on_requires_action",
    "capture_method",
    "statement_descriptor",
    "statement_descriptor_suffix",
    "return_url",
    "automatic_payment_methods",
    "use_stripe_sdk",
)


def _check_common(params: Params) -> None:
    choice(params, "setup_future_usage", ("on_session", "off_session"), None)
    if params.get("capture_method") == "manual":
        raise StripeError(400, "capture_method=manual is not modelled by this fake.")
    choice(params, "capture_method", ("automatic", "automatic_async"), None)
    types = params.get("payment_method_types")
    if types is not None and types != ["card"]:
        raise StripeError(
            400, "This fake has card PaymentMethods only.", None, "payment_method_types"
        )
    off = params.get("off_session")
    if off not in (None, "true", "false", True, False, "one_off", "recurring"):
        raise StripeError(400, f"Invalid off_session: {off}", None, "off_session")


def _missing_payment_method(pi_id: str) -> StripeError:
    return StripeError(
        400,
        f"You cannot confirm this PaymentIntent because it's missing a payment method. "
        f"Update the PaymentIntent ({pi_id}) with a payment method and then confirm it again.",
        UNEXPECTED_STATE,
    )


def create(path: Mapping[str, str], params: Params) -> Any:
    check_params(params, CREATE_PARAMS, required=("amount", "currency"))
    amount = to_amount(params)
    assert amount is not None
    _check_common(params)
    confirm = to_bool(params, "confirm")
    if params.get("off_session") is not None and not confirm:
        # The reference: off_session "can only be used with confirm=true".
        raise StripeError(
            400, "off_session can only be used when confirm is true.", None, "off_session"
        )
    customer = params.get("customer")
    if customer is not None:
        customer = payment_method_object.customer_or_error(customer).id
    pm = None
    if params.get("payment_method"):
        pm = payment_method_object.resolve(params["payment_method"], "payment_method")
        payment_method_object.check_usable(pm, customer)
    pi = FakePaymentIntent(params, amount, customer)
    if pm is not None:
        pi._pm, pi.payment_method, pi.status = pm, pm.id, "requires_confirmation"
    if confirm:
        if pm is None:
            res.store.pop("payment_intent:" + pi.id)  # a 400: nothing is created
            raise _missing_payment_method(pi.id)
        confirm_with(pi, pm, params)
    return pi


def retrieve(path: Mapping[str, str], params: Params) -> Any:
    obj = res.store.get("payment_intent:" + path["id"])
    if obj is None:
        raise no_such("payment_intent", path["id"])
    return obj


def update(path: Mapping[str, str], params: Params) -> Any:
    """POST /v1/payment_intents/{id}: metadata and description any time;
    payment_method and setup_future_usage while not yet paid."""
    check_params(
        params,
        ("metadata", "description", "receipt_email", "payment_method", "setup_future_usage"),
    )
    pi = ours(path["id"])
    _check_common(params)
    if "metadata" in params:
        pi.metadata = merge_metadata(pi.metadata, to_metadata(params))
    for field in ("description", "receipt_email"):
        if field in params:
            setattr(pi, field, params[field] or None)
    if "payment_method" in params or "setup_future_usage" in params:
        if pi.status not in CONFIRMABLE:
            raise StripeError(
                400,
                f"This PaymentIntent's payment_method could not be updated because it has a "
                f"status of {pi.status}. You may only update the payment_method of a "
                f"PaymentIntent with one of the following statuses: {', '.join(CONFIRMABLE)}.",
                UNEXPECTED_STATE,
            )
        pi.setup_future_usage = params.get("setup_future_usage", pi.setup_future_usage)
        if params.get("payment_method"):
            pm = payment_method_object.resolve(params["payment_method"], "payment_method")
            payment_method_object.check_usable(pm, pi.customer)
            pi._pm, pi.payment_method = pm, pm.id
            pi.status, pi.next_action = "requires_confirmation", None
    return pi


def confirm(path: Mapping[str, str], params: Params) -> Any:
    check_params(
        params,
        (
            "payment_method",
            "off_session",
            "return_url",
            "error_on_requires_action",
            "setup_future_usage",
            "receipt_email",
            "use_stripe_sdk",
            "capture_method",
            "payment_method_types",
        ),
    )
    pi = ours(path["id"])
    _check_common(params)
    if pi.status not in CONFIRMABLE:
        if pi.status == "succeeded":
            message = (
                "You cannot confirm this PaymentIntent because it has already succeeded "
                "after being previously confirmed."
            )
        else:
            message = (
                f"You cannot confirm this PaymentIntent because it has a status of {pi.status}. "
                "Only a PaymentIntent with one of the following statuses may be confirmed: "
                + ", ".join(CONFIRMABLE)
                + "."
            )
        raise StripeError(400, message, UNEXPECTED_STATE)
    pm = pi._pm if pi.payment_method else None
    if params.get("payment_method"):
        pm = payment_method_object.resolve(params["payment_method"], "payment_method")
        payment_method_object.check_usable(pm, pi.customer)
    if pm is None:
        raise _missing_payment_method(pi.id)
    for field in ("setup_future_usage", "receipt_email"):
        if field in params:
            setattr(pi, field, params[field])
    confirm_with(pi, pm, params)
    return pi


def cancel(path: Mapping[str, str], params: Params) -> Any:
    check_params(params, ("cancellation_reason",))
    obj = res.store.get("payment_intent:" + path["id"])
    if obj is not None and not isinstance(obj, FakePaymentIntent):
        return LocalstripePaymentIntent._api_cancel(path["id"])
    pi = ours(path["id"])
    reason = choice(
        params,
        "cancellation_reason",
        ("duplicate", "fraudulent", "requested_by_customer", "abandoned"),
        None,
    )
    if pi.status not in CANCELABLE:
        # Stripe's message for this, word for word as integrations record it.
        raise StripeError(
            400,
            f"You cannot cancel this PaymentIntent because it has a status of {pi.status}. "
            "Only a PaymentIntent with one of the following statuses may be canceled: "
            + ", ".join(CANCELABLE)
            + ".",
            UNEXPECTED_STATE,
        )
    pi.status, pi.next_action = "canceled", None
    pi.canceled_at, pi.cancellation_reason = int(time.time()), reason
    return pi


def refuse_uncapturable(status: str) -> StripeError:
    return StripeError(
        400,
        f"This PaymentIntent could not be captured because it has a status of {status}. "
        "Only a PaymentIntent with one of the following statuses may be captured: "
        "requires_capture.",
        "payment_intent_unexpected_state",
    )


def capture(path: Mapping[str, str], params: Params) -> Any:
    obj = res.store.get("payment_intent:" + path["id"])
    if obj is not None and not isinstance(obj, FakePaymentIntent):
        return LocalstripePaymentIntent._api_capture(path["id"], **params)
    raise refuse_uncapturable(ours(path["id"]).status)


def list_all(path: Mapping[str, str], params: Params) -> Any:
    """GET /v1/payment_intents (by `customer`), newest first."""
    check_params(params, ("customer", "limit", "starting_after", "ending_before"))
    items = objects("payment_intent")
    if params.get("customer"):
        items = [pi for pi in items if pi.customer == params["customer"]]
    return page("/v1/payment_intents", items, params)


def localstripe_authenticate(path: Mapping[str, str], params: Params) -> Any:
    """localstripe's own POST /v1/payment_intents/{id}/_authenticate, for
    either kind of PaymentIntent."""
    obj = res.store.get("payment_intent:" + path["id"])
    if isinstance(obj, FakePaymentIntent):
        if params.get("client_secret") != obj.client_secret:
            raise StripeError(401, "Unauthorized")
        return authenticate(obj.id, to_bool(params, "success"))
    return LocalstripePaymentIntent._api_authenticate(path["id"], **params)


ROUTES = {
    ("POST", "/v1/payment_intents"): endpoint(create),
    ("GET", "/v1/payment_intents"): endpoint(list_all),
    ("GET", "/v1/payment_intents/{id}"): endpoint(retrieve),
    ("POST", "/v1/payment_intents/{id}"): endpoint(update),
    ("POST", "/v1/payment_intents/{id}/confirm"): endpoint(confirm),
    ("POST", "/v1/payment_intents/{id}/cancel"): endpoint(cancel),
    ("POST", "/v1/payment_intents/{id}/capture"): endpoint(capture),
    ("POST", "/v1/payment_intents/{id}/_authenticate"): endpoint(localstripe_authenticate),
}
