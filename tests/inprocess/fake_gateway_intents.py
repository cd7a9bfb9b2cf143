"""The in-process Stripe's PaymentIntents (see fake_gateway.py for how it behaves):
a mixin of `FakeGateway`, which keeps its objects and records its calls.

As Stripe: a PaymentIntent is created and confirmed off-session for a payment method of
the customer (a legacy `card_…` is accepted as `payment_method`, as Stripe accepts it). A
card that declines raises `CardDeclined` (with the PaymentIntent's and the failed charge's
ids) and leaves the PaymentIntent `requires_payment_method`; a card that needs 3-D Secure
(`require_authentication`) is RETURNED `requires_payment_method` with the error code
`authentication_required`, as the real gateway returns Stripe's 402. The customer's
on-session confirm and authentication is `authenticate` (success: `succeeded`; failure:
`requires_payment_method`, `payment_intent_authentication_failure`).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core.errors import CardDeclined, StripeInvalidRequest, StripeNotFound
from tasks.gateway import IntentOutcome

if TYPE_CHECKING:
    from tests.inprocess.fake_gateway import FakeGateway

# Stripe's statuses from which a PaymentIntent may still be canceled.
CANCELABLE = frozenset(
    {"requires_payment_method", "requires_confirmation", "requires_action", "processing"}
)


@dataclass
class Intent:
    id: str
    customer_id: str
    payment_method: str
    amount: int
    currency: str
    description: str | None
    metadata: dict[str, str]
    created: int
    status: str = "requires_confirmation"
    charge_id: str | None = None
    error_code: str | None = None
    decline_code: str | None = None
    charges: list[str] = field(default_factory=list)

    @property
    def client_secret(self) -> str:
        return f"{self.id}_secret_{self.id[-8:]}"

    def outcome(self) -> IntentOutcome:
        waiting = self.status == "requires_payment_method"
        return IntentOutcome(
            intent_id=self.id,
            status=self.status,
            client_secret=self.client_secret,
            charge_id=self.charge_id,
            # Stripe clears it when a confirmation fails.
            payment_method=None if waiting else self.payment_method,
            created=self.created,
            error_code=self.error_code,
            decline_code=self.decline_code,
            error_message="Your card was declined." if self.decline_code else None,
        )


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


class FakeIntents:
    """PaymentIntents, with the methods of `tasks.gateway.StripeGateway`."""

    @property
    def intents(self) -> dict[str, Intent]:
        """Every PaymentIntent, oldest first (kept beside FakeGateway's own dicts)."""
        store: dict[str, Intent] = self.__dict__.setdefault("_intents", {})
        return store

    @property
    def _needs_authentication(self) -> set[str]:
        needs: set[str] = self.__dict__.setdefault("_authentication_cards", set())
        return needs

    # ---- the test's controls (not recorded as calls) ----------------------------------

    def require_authentication(self, payment_method: str) -> None:
        """Off-session charges of this card need the customer's 3-D Secure."""
        self._needs_authentication.add(payment_method)

    def authenticate(self, intent_id: str, success: bool = True) -> None:
        """The customer, back on-session, confirms the PaymentIntent and passes (or fails)
        3-D Secure."""
        intent = self.intents[intent_id]
        assert intent.status in ("requires_payment_method", "requires_action"), intent.status
        if not success:
            intent.status = "requires_payment_method"
            intent.error_code, intent.decline_code = "payment_intent_authentication_failure", None
            return
        intent.status, intent.error_code, intent.decline_code = "succeeded", None, None
        intent.charge_id = _new_id("ch")
        intent.charges.append(intent.charge_id)

    def set_intent_status(self, intent_id: str, status: str) -> None:
        """Someone (Stripe, the dashboard) moved the PaymentIntent to `status`."""
        self.intents[intent_id].status = status

    def age_intent(self, intent_id: str, hours: float) -> None:
        """The PaymentIntent was created `hours` earlier than it was."""
        self.intents[intent_id].created -= int(hours * 3600)

    # ---- StripeGateway -----------------------------------------------------------------

    def create_payment_intent(
        self,
        key: str,
        *,
        customer_id: str,
        payment_method: str,
        amount: int,
        currency: str,
        description: str | None,
        metadata: dict[str, str],
    ) -> IntentOutcome:
        params = {
            "customer_id": customer_id,
            "payment_method": payment_method,
            "amount": amount,
            "currency": currency,
            "description": description,
            "metadata": metadata,
        }
        fake = self._fake()
        return fake._call("create_payment_intent", key, params, lambda: self._confirm(**params))

    def retrieve_payment_intent(self, intent_id: str) -> IntentOutcome:
        return self._fake()._call(
            "retrieve_payment_intent",
            None,
            {"intent_id": intent_id},
            lambda: self._intent(intent_id).outcome(),
        )

    def cancel_payment_intent(self, key: str, intent_id: str, reason: str) -> IntentOutcome:
        def cancel() -> IntentOutcome:
            intent = self._intent(intent_id)
            if intent.status not in CANCELABLE:
                raise StripeInvalidRequest(
                    f"You cannot cancel this PaymentIntent because it has a status of"
                    f" {intent.status}."
                )
            intent.status = "canceled"
            return intent.outcome()

        params = {"intent_id": intent_id, "reason": reason}
        return self._fake()._call("cancel_payment_intent", key, params, cancel)

    def find_payment_intent(
        self,
        *,
        customer_id: str,
        event_id: str,
        generation: int | None = None,
        succeeded: bool = False,
    ) -> IntentOutcome | None:
        def find() -> IntentOutcome | None:
            for intent in reversed(self.intents.values()):  # Stripe: newest first
                if intent.customer_id != customer_id:
                    continue
                if intent.metadata.get("event_id") != event_id:
                    continue
                if generation is not None and intent.metadata.get("generation", "0") != str(
                    generation
                ):
                    continue
                if succeeded and intent.status != "succeeded":
                    continue
                return intent.outcome()
            return None

        params = {
            "customer_id": customer_id,
            "event_id": event_id,
            "generation": generation,
            "succeeded": succeeded,
        }
        return self._fake()._call("find_payment_intent", None, params, find)

    # ---- Stripe's side -----------------------------------------------------------------

    def _fake(self) -> FakeGateway:
        return self  # type: ignore[return-value]  # always a FakeGateway's mixin

    def _intent(self, intent_id: str) -> Intent:
        if intent_id not in self.intents:
            raise StripeNotFound(f"No such payment_intent: {intent_id!r}")
        return self.intents[intent_id]

    def _confirm(self, **params: Any) -> IntentOutcome:
        fake = self._fake()
        customer = fake._customer(params["customer_id"])
        method = params["payment_method"]
        card = fake.cards.get(method)
        if card is None or method not in customer.cards:
            raise StripeNotFound(f"No such PaymentMethod: {method!r}")
        intent = Intent(
            _new_id("pi"), customer.id, method, params["amount"], params["currency"],
            params["description"], dict(params["metadata"]), created=int(time.time()),
        )  # fmt: skip
        self.intents[intent.id] = intent
        if method in self._needs_authentication:
            intent.status, intent.error_code = "requires_payment_method", "authentication_required"
            intent.charge_id = _new_id("ch")  # the failed attempt's charge
            return intent.outcome()
        if card.decline_code:
            intent.status, intent.error_code = "requires_payment_method", "card_declined"
            intent.decline_code, intent.charge_id = card.decline_code, _new_id("ch")
            raise CardDeclined(
                "Your card was declined.",
                decline_code=card.decline_code,
                failure_code="card_declined",
                charge_id=intent.charge_id,
                payment_intent_id=intent.id,
            )
        intent.status, intent.charge_id = "succeeded", _new_id("ch")
        intent.charges.append(intent.charge_id)
        return intent.outcome()
