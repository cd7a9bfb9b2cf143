"""The PaymentIntent object (API version 2026-10-28,
https://docs.stripe.com/api/payment_intents/object) and its lookup.

Its state machine (confirm, pay, 3-D Secure) is payment_intent_confirm.py;
the HTTP endpoints are payment_intents.py.
"""

from __future__ import annotations

from typing import Any

from .common import Params, StripeError, no_such, stamp, to_metadata
from .localstripe_ext import res


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


def ours(pi_id: str) -> FakePaymentIntent:
    """One of our PaymentIntents (not one an invoice of localstripe's made)."""
    obj = res.store.get("payment_intent:" + pi_id)
    if obj is None:
        raise no_such("payment_intent", pi_id)
    if not isinstance(obj, FakePaymentIntent):
        raise StripeError(400, "This PaymentIntent belongs to an invoice (localstripe's).")
    return obj
