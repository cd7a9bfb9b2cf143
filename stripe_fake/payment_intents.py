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

from . import cards, payment_methods
from .charges import new_charge
from .common import (
    DOC_URL,
    Params,
    StripeError,
    card_error,
    check_params,
    choice,
    endpoint,
    merge_metadata,
    no_such,
    objects,
    page,
    stamp,
    to_amount,
    to_bool,
    to_metadata,
)
from .localstripe_ext import res

PaymentMethod = res.PaymentMethod
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
# Stripe's last_payment_error after a failed 3-D Secure (its message and
# code as public integrations record them).
AUTHENTICATION_FAILURE = (
    "The provided PaymentMethod has failed authentication. You can provide "
    "payment_method_data or a new PaymentMethod to attempt to fulfill this "
    "PaymentIntent again."
)


class FakePaymentIntent(res.StripeObject):  # type: ignore[misc]
    """A PaymentIntent: public attributes are the API's fields (localstripe
    exports every attribute not starting with "_")."""

    object = "payment_intent"
    _id_prefix = "pi_"

    def __init__(self, params: Params, amount: int, customer: str | None) -> None:
        super().__init__()
        stamp(self)
        self.amount = amount
        self.amount_capturable = 0
        self.amount_details: dict[str, Any] = {"tip": {}}
        self.amount_received = 0
        self.application = None
        self.application_fee_amount = None
        self.automatic_payment_methods = params.get("automatic_payment_methods")
        self.canceled_at: int | None = None
        self.cancellation_reason: str | None = None
        self.capture_method = params.get("capture_method") or "automatic_async"
        self.client_secret = f"{self.id}_secret_{res.random_id(24)}"
        self.confirmation_method = "automatic"
        self.currency = str(params["currency"]).lower()
        self.customer = customer
        self.customer_account = None
        self.description = params.get("description")
        self.excluded_payment_method_types = None
        self.last_payment_error: dict[str, Any] | None = None
        self.latest_charge: str | None = None
        self.metadata = to_metadata(params)
        self.next_action: dict[str, Any] | None = None
        self.on_behalf_of = None
        self.payment_method: str | None = None
        self.payment_method_configuration_details = None
        self.payment_method_options = {
            "card": {
                "installments": None,
                "mandate_options": None,
                "network": None,
                "request_three_d_secure": "automatic",
            }
        }
        self.payment_method_types = ["card"]
        self.processing = None
        self.receipt_email = params.get("receipt_email")
        self.review = None
        self.setup_future_usage = params.get("setup_future_usage")
        self.shipping = None
        self.source = None
        self.statement_descriptor = params.get("statement_descriptor")
        self.statement_descriptor_suffix = params.get("statement_descriptor_suffix")
        self.status = "requires_payment_method"
        self.transfer_data = None
        self.transfer_group = None
        self._pm: Any = None  # the PaymentMethod object being confirmed
        self._off_session = False


def _usable(pm: Any, customer: str | None) -> None:
    """Stripe's checks on a PaymentMethod named for a PaymentIntent."""
    if getattr(pm, "_used_up", False):
        raise StripeError(
            400, payment_methods.USED_UP, payment_methods.UNEXPECTED_STATE, "payment_method"
        )
    owner = pm.customer
    if owner is not None and owner != customer:
        # A card source is always some customer's; a PaymentMethod attached to
        # one can only pay for that customer.
        raise payment_methods.not_customers(pm.id, "payment_method")


def _error_fields(pi: FakePaymentIntent, pm: Any, charge: Any) -> dict[str, Any]:
    return {
        "payment_intent": pi._export(),
        "payment_method": payment_methods.render(pm),
        "charge": charge.id if charge is not None else None,
    }


def _failed(pi: FakePaymentIntent, decline: cards.Decline, charge: Any) -> StripeError:
    """Move `pi` back to requires_payment_method after a decline; the 402."""
    pm = pi._pm
    pi.status = "requires_payment_method"
    pi.payment_method = None
    pi.next_action = None
    if charge is not None:
        pi.latest_charge = charge.id
    pi.last_payment_error = {
        "charge": charge.id if charge is not None else None,
        "code": decline.code,
        "decline_code": decline.decline_code,
        "doc_url": DOC_URL + decline.code.replace("_", "-"),
        "message": decline.message,
        "payment_method": payment_methods.render(pm),
        "type": "card_error",
    }
    return card_error(
        decline.message, decline.code, decline.decline_code, **_error_fields(pi, pm, charge)
    )


def _pay(pi: FakePaymentIntent) -> StripeError | None:
    """Charge the card: succeeded, or the 402 the caller should answer."""
    pm = pi._pm
    rendered = payment_methods.render(pm)
    decline = cards.card_for(payment_methods.number_of(pm)).decline
    charge = new_charge(pi, pm, rendered, decline)
    if decline is not None:
        return _failed(pi, decline, charge)
    pi.status = "succeeded"
    pi.amount_received = pi.amount
    pi.latest_charge = charge.id
    pi.last_payment_error = None
    if pi.setup_future_usage and pi.customer and pm.customer is None:
        pm.customer = pi.customer  # saved for future use once it succeeded
    if pi.setup_future_usage == "off_session":
        pm._set_up_off_session = True
    return None


def _needs_authentication(pm: Any, off_session: bool) -> bool:
    auth = cards.card_for(payment_methods.number_of(pm)).authentication
    if auth == "unless_set_up":
        return not (off_session and getattr(pm, "_set_up_off_session", False))
    return auth == "always"


def _confirm(pi: FakePaymentIntent, pm: Any, params: Params) -> None:
    """Confirm `pi` with `pm`.

    Raises:
        StripeError: 402 card_error with the PaymentIntent: a decline, or
            authentication needed while off-session.
    """
    off_session = params.get("off_session") not in (None, False, "false")
    if pm.customer is None and isinstance(pm, PaymentMethod) and not pi.setup_future_usage:
        # Used without being attached: Stripe's USED_UP message says it may
        # not be used again.
        pm._used_up = True
    pi._pm, pi._off_session = pm, off_session
    pi.payment_method = pm.id
    pi.last_payment_error = None
    pi.next_action = None
    if _needs_authentication(pm, off_session):
        if off_session:
            # Off-session the issuer declines with authentication_required
            # (decline code of https://docs.stripe.com/declines/codes); the
            # failed charge it leaves is what Stripe's own answers show.
            auth = cards.AUTHENTICATION_REQUIRED
            raise _failed(pi, auth, new_charge(pi, pm, payment_methods.render(pm), auth))
        if to_bool(params, "error_on_requires_action"):
            # Error code page: payment_intent_action_required. Status and
            # type of this answer are an assumption.
            pi.status, pi.payment_method = "requires_payment_method", None
            raise StripeError(
                402,
                "This payment requires additional user action before it can be completed.",
                "payment_intent_action_required",
                error_type="card_error",
                **_error_fields(pi, pm, None),
            )
        pi.status = "requires_action"
        return_url = params.get("return_url")
        pi.next_action = (
            {
                "type": "redirect_to_url",
                "redirect_to_url": {
                    "return_url": return_url,
                    "url": f"https://hooks.stripe.com/3d_secure_2/hosted/{pi.id}",
                },
            }
            if return_url
            else {
                "type": "use_stripe_sdk",
                "use_stripe_sdk": {"type": "three_d_secure_redirect", "stripe_js": ""},
            }
        )
        return
    error = _pay(pi)
    if error is not None:
        raise error


# ---- endpoints ------------------------------------------------------------

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
        customer = payment_methods.customer_or_error(customer).id
    pm = None
    if params.get("payment_method"):
        pm = payment_methods.resolve(params["payment_method"], "payment_method")
        _usable(pm, customer)
    pi = FakePaymentIntent(params, amount, customer)
    if pm is not None:
        pi._pm, pi.payment_method, pi.status = pm, pm.id, "requires_confirmation"
    if confirm:
        if pm is None:
            res.store.pop("payment_intent:" + pi.id)  # a 400: nothing is created
            raise _missing_payment_method(pi.id)
        _confirm(pi, pm, params)
    return pi


def _ours(pi_id: str) -> FakePaymentIntent:
    obj = res.store.get("payment_intent:" + pi_id)
    if obj is None:
        raise no_such("payment_intent", pi_id)
    if not isinstance(obj, FakePaymentIntent):
        raise StripeError(400, "This PaymentIntent belongs to an invoice (localstripe's).")
    return obj


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
    pi = _ours(path["id"])
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
            pm = payment_methods.resolve(params["payment_method"], "payment_method")
            _usable(pm, pi.customer)
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
    pi = _ours(path["id"])
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
        pm = payment_methods.resolve(params["payment_method"], "payment_method")
        _usable(pm, pi.customer)
    if pm is None:
        raise _missing_payment_method(pi.id)
    for field in ("setup_future_usage", "receipt_email"):
        if field in params:
            setattr(pi, field, params[field])
    _confirm(pi, pm, params)
    return pi


def cancel(path: Mapping[str, str], params: Params) -> Any:
    check_params(params, ("cancellation_reason",))
    obj = res.store.get("payment_intent:" + path["id"])
    if obj is not None and not isinstance(obj, FakePaymentIntent):
        return LocalstripePaymentIntent._api_cancel(path["id"])
    pi = _ours(path["id"])
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
    raise refuse_uncapturable(_ours(path["id"]).status)


def list_all(path: Mapping[str, str], params: Params) -> Any:
    """GET /v1/payment_intents (by `customer`), newest first."""
    check_params(params, ("customer", "limit", "starting_after", "ending_before"))
    items = objects("payment_intent")
    if params.get("customer"):
        items = [pi for pi in items if pi.customer == params["customer"]]
    return page("/v1/payment_intents", items, params)


def authenticate(pi_id: str, success: bool) -> FakePaymentIntent:
    """The customer completes (or fails) 3-D Secure for a PaymentIntent in
    requires_action. Not a Stripe API: our control plane plays stripe.js.

    Raises:
        StripeError: no such PaymentIntent, or not in requires_action.
    """
    pi = _ours(pi_id)
    if pi.status != "requires_action":
        raise StripeError(400, f"PaymentIntent {pi_id} is {pi.status}, not requires_action.")
    pm = pi._pm
    pi.next_action = None
    if success:
        # A decline after authentication stays on the PaymentIntent; with
        # setup_future_usage=off_session the card is now set up (_pay).
        _pay(pi)
        return pi
    pi.status, pi.payment_method = "requires_payment_method", None
    pi.last_payment_error = {
        "code": "payment_intent_authentication_failure",
        "doc_url": DOC_URL + "payment-intent-authentication-failure",
        "message": AUTHENTICATION_FAILURE,
        "payment_method": payment_methods.render(pm),
        # Assumption: the type Stripe gives this error.
        "type": "invalid_request_error",
    }
    return pi


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
