"""The controller's direct Stripe calls: reads and customer-side actions.

Sent with the test key and ``X-Fake-Control: 1``, so they are not logged and
no fault applies. A mixin of :class:`stripe_fake.control.FakeStripe`.
"""

from __future__ import annotations

from typing import Any

from .control_http import FakeStripeHttp, _q


class StripeObjects(FakeStripeHttp):
    """Stripe objects read, and made as stripe.js would, outside the request log."""

    def get_customer(self, customer_id: str) -> dict[str, Any]:
        customer: dict[str, Any] = self._stripe("GET", f"/v1/customers/{_q(customer_id)}")
        return customer

    def list_customers(self) -> list[dict[str, Any]]:
        return self._list_all("/v1/customers", {})

    def list_charges(self, customer_id: str) -> list[dict[str, Any]]:
        return self._list_all("/v1/charges", {"customer": customer_id})

    def get_payment_intent(self, pi_id: str) -> dict[str, Any]:
        intent: dict[str, Any] = self._stripe("GET", f"/v1/payment_intents/{_q(pi_id)}")
        return intent

    def list_payment_intents(self, customer_id: str) -> list[dict[str, Any]]:
        return self._list_all("/v1/payment_intents", {"customer": customer_id})

    def list_payment_methods(self, customer_id: str) -> list[dict[str, Any]]:
        """The customer's card PaymentMethods (legacy card sources included)."""
        return self._list_all(f"/v1/customers/{_q(customer_id)}/payment_methods", {"type": "card"})

    def list_refunds(
        self, payment_intent: str | None = None, charge: str | None = None
    ) -> list[dict[str, Any]]:
        query = {k: v for k, v in (("payment_intent", payment_intent), ("charge", charge)) if v}
        return self._list_all("/v1/refunds", query)

    def get_payment_method(self, pm_id: str) -> dict[str, Any]:
        method: dict[str, Any] = self._stripe("GET", f"/v1/payment_methods/{_q(pm_id)}")
        return method

    def create_payment_method(self, number: str = "4242424242424242") -> str:
        """A card PaymentMethod, as stripe.js's createPaymentMethod makes one."""
        form = {"type": "card", "card[number]": number, "card[exp_month]": "12",
                "card[exp_year]": "2034", "card[cvc]": "123"}  # fmt: skip
        return str(self._stripe("POST", "/v1/payment_methods", form=form)["id"])

    def confirm_setup_intent(self, si_id: str, payment_method: str) -> dict[str, Any]:
        """The customer confirms a SetupIntent with a card, as stripe.js's
        confirmCardSetup does; returns the SetupIntent (its `payment_method`
        attached to the customer on success)."""
        path = f"/v1/setup_intents/{_q(si_id)}/confirm"
        intent: dict[str, Any] = self._stripe("POST", path, form={"payment_method": payment_method})
        return intent

    def list_cards(self, customer_id: str) -> list[dict[str, Any]]:
        return self._list_all(f"/v1/customers/{_q(customer_id)}/sources", {"object": "card"})

    def create_card_token(
        self,
        number: str = "4242424242424242",
        exp_month: int = 12,
        exp_year: int = 2030,
        cvc: str = "123",
    ) -> str:
        token = self._stripe(
            "POST",
            "/v1/tokens",
            form={
                "card[number]": number,
                "card[exp_month]": str(exp_month),
                "card[exp_year]": str(exp_year),
                "card[cvc]": cvc,
            },
        )
        return str(token["id"])

    def confirm_payment_intent_on_session(self, pi_id: str, payment_method: str) -> dict[str, Any]:
        """The customer back in the app (stripe.js confirmCardPayment): confirm on-session
        with `payment_method`; a 3-D Secure card then waits in requires_action for
        `authenticate_payment_intent`. Returns the PaymentIntent."""
        path = f"/v1/payment_intents/{_q(pi_id)}/confirm"
        intent: dict[str, Any] = self._stripe("POST", path, form={"payment_method": payment_method})
        return intent
