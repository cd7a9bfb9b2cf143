"""The in-process Stripe's PaymentMethods and SetupIntents (see fake_gateway.py for how it behaves):
a mixin of `FakeGateway`, which keeps its objects and records its calls.

As Stripe behaves where the card workflows depend on it:

- A PaymentMethod of a number has the fingerprint a token of that number has
  (`card_details_of`): one card, whichever API it came through.
- Stripe's test ids (`pm_card_visa`, `pm_card_chargeDeclined`, ...) are templates: every
  use (retrieve, attach) makes a new `pm_...` copy of the test card.
- Attach refuses a PaymentMethod attached to any customer already, or detached (used up);
  the numbers in `ATTACH_DECLINES` are declined by the card check at attach (402, with the
  decline code; the answer is kept under the key, as Stripe keeps a 402).
- Detach refuses one that is not attached; a detached PaymentMethod is used up. Detaching
  the customer's invoice default clears it.
- A SetupIntent confirmed with a card (`add_setup_confirmation`, what stripe.js's
  confirmCardSetup does) attaches a new PaymentMethod to its customer.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from core.errors import CardDeclined, StripeInvalidRequest, StripeNotFound
from tasks.gateway import CardDetails, PaymentMethodCard, SetupOutcome

if TYPE_CHECKING:
    from tests.inprocess.fake_gateway import Customer

T = TypeVar("T")

_BRANDS = {"3": "American Express", "4": "Visa", "5": "MasterCard", "6": "Discover"}
# Declined by the card check when attached (Stripe's testing page: "Decline after
# attaching" is 4000000000000341, which attaches fine; these decline at attach).
ATTACH_DECLINES = {
    "4000000000000002": "generic_decline",
    "4000000000009987": "lost_card",
    "4000000000009979": "stolen_card",
}
# Stripe's test PaymentMethod ids, each a template of a test number.
TEST_PAYMENT_METHODS = {
    "pm_card_visa": "4242424242424242",
    "pm_card_mastercard": "5555555555554444",
    "pm_card_chargeDeclined": "4000000000000002",
    "pm_card_chargeCustomerFail": "4000000000000341",
    "pm_card_chargeDeclinedInsufficientFunds": "4000000000009995",
    "pm_card_authenticationRequired": "4000002760003184",
}


def card_details_of(number: str, brand: str | None = None) -> CardDetails:
    """The card of a test number, as a token or a PaymentMethod of it reads: the same
    number, the same fingerprint."""
    return CardDetails(
        fingerprint="fp_" + hashlib.sha256(number.encode()).hexdigest()[:16],
        brand=brand or _BRANDS.get(number[0], "Unknown"),
        last4=number[-4:],
        exp_month=12,
        exp_year=2034,
    )


@dataclass
class PaymentMethod:
    id: str
    number: str
    details: CardDetails  # card_id: this PaymentMethod's id
    customer_id: str | None = None
    # Detached: Stripe refuses to attach or use it again.
    used_up: bool = False

    def view(self) -> PaymentMethodCard:
        return PaymentMethodCard(self.details, self.customer_id)


@dataclass
class SetupIntent:
    id: str
    customer_id: str
    usage: str
    metadata: dict[str, str]
    client_secret: str = field(repr=False)
    status: str = "requires_payment_method"
    payment_method: str | None = None

    def outcome(self) -> SetupOutcome:
        return SetupOutcome(self.id, self.client_secret, self.status)


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


class FakeCards:
    """PaymentMethods and SetupIntents, with the methods of `tasks.gateway.StripeGateway`."""

    # FakeGateway's, used here.
    customers: dict[str, Customer]
    _call: Callable[..., Any]
    _customer: Callable[[str], Customer]

    def __init__(self) -> None:
        self.payment_methods: dict[str, PaymentMethod] = {}
        self.setup_intents: dict[str, SetupIntent] = {}
        super().__init__()

    # ---- the test's controls (not recorded as calls) ----------------------------------

    def add_payment_method(
        self, number: str = "4242424242424242", *, brand: str | None = None,
        customer_id: str | None = None,
    ) -> str:  # fmt: skip
        """A PaymentMethod made by stripe.js for a card number (attached to `customer_id`
        already, if given); returns its id."""
        pm = self._new_payment_method(number, brand)
        if customer_id is not None:
            self._customer(customer_id)
            pm.customer_id = customer_id
        return pm.id

    def add_setup_confirmation(self, setup_intent_id: str, number: str = "4242424242424242") -> str:
        """The customer confirmed the SetupIntent with a card in stripe.js
        (confirmCardSetup): a new PaymentMethod, attached to the SetupIntent's customer.
        Returns its id, as the app reads it from the SetupIntent."""
        seti = self.setup_intents[setup_intent_id]
        pm_id = self.add_payment_method(number, customer_id=seti.customer_id)
        seti.status, seti.payment_method = "succeeded", pm_id
        return pm_id

    def payment_methods_of(self, customer_id: str) -> list[str]:
        """The ids of the PaymentMethods attached to the customer, oldest first."""
        return [pm.id for pm in self.payment_methods.values() if pm.customer_id == customer_id]

    # ---- StripeGateway -----------------------------------------------------------------

    def retrieve_payment_method(self, payment_method: str) -> PaymentMethodCard:
        def retrieve() -> PaymentMethodCard:
            return self._payment_method(payment_method).view()

        return self._call(
            "retrieve_payment_method", None, {"payment_method": payment_method}, retrieve
        )  # type: ignore[no-any-return]

    def attach_payment_method(
        self, key: str, *, customer_id: str, payment_method: str
    ) -> PaymentMethodCard:
        def attach() -> PaymentMethodCard:
            self._customer(customer_id)
            pm = self._payment_method(payment_method)
            if pm.customer_id is not None:
                raise StripeInvalidRequest(
                    "The payment method you provided has already been attached to a customer."
                )
            if pm.used_up:
                raise StripeInvalidRequest(
                    f"The provided PaymentMethod {pm.id} was detached from a Customer."
                    " It may not be used again."
                )
            decline = ATTACH_DECLINES.get(pm.number)
            if decline is not None:
                raise CardDeclined(
                    "Your card was declined.", decline_code=decline, failure_code="card_declined"
                )
            pm.customer_id = customer_id
            return pm.view()

        params = {"customer_id": customer_id, "payment_method": payment_method}
        return self._call("attach_payment_method", key, params, attach)  # type: ignore[no-any-return]

    def detach_payment_method(self, payment_method: str) -> None:
        def detach() -> None:
            pm = self._payment_method(payment_method)
            if pm.customer_id is None:
                raise StripeInvalidRequest(
                    "The payment method you provided is not attached to a customer so"
                    " detachment is impossible."
                )
            customer = self._customer(pm.customer_id)
            if customer.default_payment_method == pm.id:
                customer.default_payment_method = None
            pm.customer_id, pm.used_up = None, True

        self._call("detach_payment_method", None, {"payment_method": payment_method}, detach)

    def create_setup_intent(
        self, key: str, *, customer_id: str, usage: str, metadata: dict[str, str]
    ) -> SetupOutcome:
        def create() -> SetupOutcome:
            self._customer(customer_id)
            seti_id = _new_id("seti")
            secret = f"{seti_id}_secret_{secrets.token_hex(12)}"
            seti = SetupIntent(seti_id, customer_id, usage, dict(metadata), secret)
            self.setup_intents[seti.id] = seti
            return seti.outcome()

        params = {"customer_id": customer_id, "usage": usage, "metadata": metadata}
        return self._call("create_setup_intent", key, params, create)  # type: ignore[no-any-return]

    def find_setup_intent(
        self, *, customer_id: str, event_id: str, generation: int | None = None
    ) -> SetupOutcome | None:
        def find() -> SetupOutcome | None:
            for seti in reversed(self.setup_intents.values()):  # Stripe: newest first
                metadata = seti.metadata
                if seti.customer_id != customer_id or metadata.get("event_id") != event_id:
                    continue
                if generation is None or metadata.get("generation", "0") == str(generation):
                    return seti.outcome()
            return None

        params = {"customer_id": customer_id, "event_id": event_id, "generation": generation}
        return self._call("find_setup_intent", None, params, find)  # type: ignore[no-any-return]

    # ---- Stripe's side (used by FakeGateway's default card) -----------------------------

    def _set_default_payment_method(self, customer_id: str, payment_method: str) -> None:
        """invoice_settings.default_payment_method: it must be attached to the customer
        (Stripe's 400 resource_missing otherwise)."""
        customer = self._customer(customer_id)
        pm = self.payment_methods.get(payment_method)
        if pm is None or pm.customer_id != customer_id:
            raise StripeNotFound(
                f"The customer does not have a payment method with the ID {payment_method}."
            )
        customer.default_payment_method = payment_method

    def _payment_method(self, payment_method: str) -> PaymentMethod:
        number = TEST_PAYMENT_METHODS.get(payment_method)
        if number is not None:  # a template: every use makes a new copy
            return self._new_payment_method(number, None)
        if payment_method not in self.payment_methods:
            raise StripeNotFound(f"No such PaymentMethod: {payment_method!r}")
        return self.payment_methods[payment_method]

    def _new_payment_method(self, number: str, brand: str | None) -> PaymentMethod:
        pm_id = _new_id("pm")
        details = card_details_of(number, brand)
        details = CardDetails(**{**details.__dict__, "card_id": pm_id})
        pm = PaymentMethod(pm_id, number, details)
        self.payment_methods[pm_id] = pm
        return pm
