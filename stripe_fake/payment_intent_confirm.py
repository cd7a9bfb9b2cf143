"""A PaymentIntent's state machine: confirm, then pay, decline or wait for 3-D Secure.

`confirm_with`: requires_payment_method | requires_confirmation -> succeeded;
requires_action (a 3-D Secure card on-session); or back to
requires_payment_method with a 402 card_error carrying the PaymentIntent (a
decline, or authentication needed off-session). `authenticate` (our control
plane, playing stripe.js): requires_action -> succeeded | requires_payment_method.
"""

from __future__ import annotations

from typing import Any

from . import cards, payment_method_object
from .charges import new_charge
from .common import DOC_URL, Params, StripeError, card_error, to_bool
from .localstripe_ext import res
from .payment_intent_object import FakePaymentIntent, ours

PaymentMethod = res.PaymentMethod

# Stripe's last_payment_error after a failed 3-D Secure (its message and
# code as public integrations record them).
AUTHENTICATION_FAILURE = (
    "The provided PaymentMethod has failed authentication. You can provide "
    "payment_method_data or a new PaymentMethod to attempt to fulfill this "
    "PaymentIntent again."
)


def _error_fields(pi: FakePaymentIntent, pm: Any, charge: Any) -> dict[str, Any]:
    return {
        "payment_intent": pi._export(),
        "payment_method": payment_method_object.render(pm),
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
        "payment_method": payment_method_object.render(pm),
        "type": "card_error",
    }
    return card_error(
        decline.message, decline.code, decline.decline_code, **_error_fields(pi, pm, charge)
    )


def _pay(pi: FakePaymentIntent) -> StripeError | None:
    """Charge the card: succeeded, or the 402 the caller should answer."""
    pm = pi._pm
    rendered = payment_method_object.render(pm)
    decline = cards.card_for(payment_method_object.number_of(pm)).decline
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
    auth = cards.card_for(payment_method_object.number_of(pm)).authentication
    if auth == "unless_set_up":
        return not (off_session and getattr(pm, "_set_up_off_session", False))
    return auth == "always"


def confirm_with(pi: FakePaymentIntent, pm: Any, params: Params) -> None:
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
            raise _failed(pi, auth, new_charge(pi, pm, payment_method_object.render(pm), auth))
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


def authenticate(pi_id: str, success: bool) -> FakePaymentIntent:
    """The customer completes (or fails) 3-D Secure for a PaymentIntent in
    requires_action. Not a Stripe API: our control plane plays stripe.js.

    Raises:
        StripeError: no such PaymentIntent, or not in requires_action.
    """
    pi = ours(pi_id)
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
        "payment_method": payment_method_object.render(pm),
        # Assumption: the type Stripe gives this error.
        "type": "invalid_request_error",
    }
    return pi
