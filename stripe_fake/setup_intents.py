"""SetupIntents as Stripe documents them (https://docs.stripe.com/api/setup_intents).

localstripe's SetupIntent never attaches the PaymentMethod to the customer,
cancels itself on a declined card and 400s on most parameters. Here a
confirmation runs the card check (402 card_error with the SetupIntent in
`error.setup_intent`, back to requires_payment_method), asks for 3-D Secure
where the test card does (requires_action, completed through the control
plane), and on success attaches the PaymentMethod to the SetupIntent's
customer ("If present, the SetupIntent's payment method will be attached to
the Customer on successful setup", the reference says of `customer`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import cards, payment_method_object
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
    to_bool,
    to_metadata,
)
from .localstripe_ext import res

CONFIRMABLE = ("requires_payment_method", "requires_confirmation", "requires_action")
UNEXPECTED_STATE = "setup_intent_unexpected_state"


class FakeSetupIntent(res.StripeObject):  # type: ignore[misc]
    """A SetupIntent; public attributes are the API's fields."""

    object = "setup_intent"
    _id_prefix = "seti_"

    def __init__(self, params: Params, customer: str | None) -> None:
        super().__init__()
        stamp(self)
        self.application = None
        self.automatic_payment_methods = params.get("automatic_payment_methods")
        self.cancellation_reason: str | None = None
        self.client_secret = f"{self.id}_secret_{res.random_id(24)}"
        self.customer = customer
        self.customer_account = None
        self.description = params.get("description")
        self.excluded_payment_method_types = None
        self.flow_directions = None
        self.last_setup_error: dict[str, Any] | None = None
        # Stripe records each attempt as a SetupAttempt (setatt_...); not here.
        self.latest_attempt = None
        self.mandate = None
        self.metadata = to_metadata(params)
        self.next_action: dict[str, Any] | None = None
        self.on_behalf_of = None
        self.payment_method: str | None = None
        self.payment_method_configuration_details = None
        self.payment_method_options = {
            "card": {
                "mandate_options": None,
                "network": None,
                "request_three_d_secure": "automatic",
            }
        }
        self.payment_method_types = ["card"]
        self.single_use_mandate = None
        self.status = "requires_payment_method"
        self.usage = params.get("usage") or "off_session"
        self._pm: Any = None


def _succeed(si: FakeSetupIntent) -> None:
    pm = si._pm
    si.status, si.next_action, si.last_setup_error = "succeeded", None, None
    if si.customer is not None and pm.customer is None:
        pm.customer = si.customer
    if si.usage == "off_session":
        pm._set_up_off_session = True


def _confirm(si: FakeSetupIntent, pm: Any, params: Params) -> None:
    """Raises: StripeError 402 when the card check declines."""
    si._pm, si.payment_method = pm, pm.id
    si.last_setup_error = None
    try:
        payment_method_object.check_card(pm)
    except StripeError as e:
        error = e.body["error"]
        si.status, si.payment_method, si.next_action = "requires_payment_method", None, None
        si.last_setup_error = {
            "code": error["code"],
            "decline_code": error.get("decline_code"),
            "doc_url": error.get("doc_url"),
            "message": error["message"],
            "payment_method": payment_method_object.render(pm),
            "type": "card_error",
        }
        raise card_error(
            error["message"],
            error["code"],
            error.get("decline_code"),
            setup_intent=si._export(),
            payment_method=payment_method_object.render(pm),
        ) from None
    if cards.card_for(payment_method_object.number_of(pm)).authentication is not None:
        # Both kinds of 3-D Secure test card authenticate on setup.
        si.status = "requires_action"
        return_url = params.get("return_url")
        si.next_action = (
            {
                "type": "redirect_to_url",
                "redirect_to_url": {
                    "return_url": return_url,
                    "url": f"https://hooks.stripe.com/3d_secure_2/hosted/{si.id}",
                },
            }
            if return_url
            else {
                "type": "use_stripe_sdk",
                "use_stripe_sdk": {"type": "three_d_secure_redirect", "stripe_js": ""},
            }
        )
        return
    _succeed(si)


def _check_types(params: Params) -> None:
    choice(params, "usage", ("on_session", "off_session"), None)
    types = params.get("payment_method_types")
    if types is not None and types != ["card"]:
        raise StripeError(
            400, "This fake has card PaymentMethods only.", None, "payment_method_types"
        )


def create(path: Mapping[str, str], params: Params) -> Any:
    check_params(
        params,
        (
            "customer",
            "usage",
            "payment_method_types",
            "payment_method",
            "confirm",
            "metadata",
            "description",
            "return_url",
            "automatic_payment_methods",
            "use_stripe_sdk",
        ),
    )
    _check_types(params)
    customer = params.get("customer")
    if customer is not None:
        customer = payment_method_object.customer_or_error(customer).id
    pm = None
    if params.get("payment_method"):
        pm = payment_method_object.resolve(params["payment_method"], "payment_method")
        payment_method_object.check_usable(pm, customer)
    confirm = to_bool(params, "confirm")
    if confirm and pm is None:
        raise StripeError(
            400,
            "You cannot confirm this SetupIntent because it's missing a payment method.",
            UNEXPECTED_STATE,
        )
    si = FakeSetupIntent(params, customer)
    if pm is not None:
        si._pm, si.payment_method, si.status = pm, pm.id, "requires_confirmation"
    if confirm:
        _confirm(si, pm, params)
    return si


def _ours(si_id: str) -> FakeSetupIntent:
    obj = res.store.get("setup_intent:" + si_id)
    if not isinstance(obj, FakeSetupIntent):
        raise no_such("setup_intent", si_id)
    return obj


def retrieve(path: Mapping[str, str], params: Params) -> Any:
    return _ours(path["id"])


def update(path: Mapping[str, str], params: Params) -> Any:
    check_params(params, ("metadata", "description", "payment_method"))
    si = _ours(path["id"])
    if "metadata" in params:
        si.metadata = merge_metadata(si.metadata, to_metadata(params))
    if "description" in params:
        si.description = params["description"] or None
    if params.get("payment_method"):
        if si.status not in CONFIRMABLE:
            raise StripeError(
                400, f"This SetupIntent has a status of {si.status}.", UNEXPECTED_STATE
            )
        pm = payment_method_object.resolve(params["payment_method"], "payment_method")
        payment_method_object.check_usable(pm, si.customer)
        si._pm, si.payment_method, si.status = pm, pm.id, "requires_confirmation"
    return si


def confirm(path: Mapping[str, str], params: Params) -> Any:
    check_params(params, ("payment_method", "return_url", "use_stripe_sdk", "client_secret"))
    si = _ours(path["id"])
    if si.status not in CONFIRMABLE:
        message = (
            "You cannot confirm this SetupIntent because it has already succeeded."
            if si.status == "succeeded"
            else f"You cannot confirm this SetupIntent because it has a status of {si.status}."
        )
        raise StripeError(400, message, UNEXPECTED_STATE)
    pm = si._pm if si.payment_method else None
    if params.get("payment_method"):
        pm = payment_method_object.resolve(params["payment_method"], "payment_method")
        payment_method_object.check_usable(pm, si.customer)
    if pm is None:
        raise StripeError(
            400,
            "You cannot confirm this SetupIntent because it's missing a payment method.",
            UNEXPECTED_STATE,
        )
    _confirm(si, pm, params)
    return si


def cancel(path: Mapping[str, str], params: Params) -> Any:
    check_params(params, ("cancellation_reason",))
    si = _ours(path["id"])
    reason = choice(
        params, "cancellation_reason", ("abandoned", "duplicate", "requested_by_customer"), None
    )
    if si.status not in CONFIRMABLE:
        raise StripeError(
            400,
            f"You cannot cancel this SetupIntent because it has a status of {si.status}.",
            UNEXPECTED_STATE,
        )
    si.status, si.next_action, si.cancellation_reason = "canceled", None, reason
    return si


def list_all(path: Mapping[str, str], params: Params) -> Any:
    check_params(params, ("customer", "payment_method", "limit", "starting_after", "ending_before"))
    items = [o for o in objects("setup_intent") if isinstance(o, FakeSetupIntent)]
    for field in ("customer", "payment_method"):
        if params.get(field):
            items = [si for si in items if getattr(si, field) == params[field]]
    return page("/v1/setup_intents", items, params)


def authenticate(si_id: str, success: bool) -> FakeSetupIntent:
    """The customer completes (or fails) 3-D Secure for a SetupIntent in
    requires_action (control plane; not a Stripe API).

    Raises:
        StripeError: no such SetupIntent, or not in requires_action.
    """
    si = _ours(si_id)
    if si.status != "requires_action":
        raise StripeError(400, f"SetupIntent {si_id} is {si.status}, not requires_action.")
    if success:
        _succeed(si)
        return si
    si.status, si.payment_method, si.next_action = "requires_payment_method", None, None
    si.last_setup_error = {
        "code": "setup_intent_authentication_failure",
        "doc_url": DOC_URL + "setup-intent-authentication-failure",
        # Assumption: wording and type (the code is on the error-codes page).
        "message": "The latest attempt to set up the payment method has failed because "
        "authentication failed.",
        "payment_method": payment_method_object.render(si._pm),
        "type": "invalid_request_error",
    }
    return si


ROUTES = {
    ("POST", "/v1/setup_intents"): endpoint(create),
    ("GET", "/v1/setup_intents"): endpoint(list_all),
    ("GET", "/v1/setup_intents/{id}"): endpoint(retrieve),
    ("POST", "/v1/setup_intents/{id}"): endpoint(update),
    ("POST", "/v1/setup_intents/{id}/confirm"): endpoint(confirm),
    ("POST", "/v1/setup_intents/{id}/cancel"): endpoint(cancel),
}
