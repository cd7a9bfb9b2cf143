"""The Stripe calls of the modern path: PaymentMethods, SetupIntents, PaymentIntents
(off-session, 3-D Secure) and Refunds."""

from __future__ import annotations

from typing import Any

import stripe

from core.errors import StripeInvalidRequest
from tasks.gateway.errors import translate, translated, translated_except_card_errors
from tasks.gateway.objects import (
    CardDetails,
    IntentOutcome,
    PaymentMethodCard,
    RefundOutcome,
    SetupOutcome,
    card_details,
    intent_outcome,
    made_by,
    refund_outcome,
)


class ModernCalls:
    """PaymentMethods, SetupIntents, PaymentIntents and Refunds, over one `StripeClient`."""

    _client: stripe.StripeClient

    # ---- PaymentMethods and SetupIntents ------------------------------------------------

    def retrieve_payment_method(self, payment_method: str) -> PaymentMethodCard:
        """A card PaymentMethod and the customer it is attached to.

        Raises:
            StripeNotFound: no such PaymentMethod.
            StripeInvalidRequest: it is not a card.
        """
        with translated():
            pm = self._client.v1.payment_methods.retrieve(payment_method)
        return _payment_method_card(pm)

    def attach_payment_method(
        self, key: str, *, customer_id: str, payment_method: str
    ) -> PaymentMethodCard:
        """Attach a PaymentMethod to the customer; returns it as attached (a test id such
        as `pm_card_visa` comes back as a new `pm_...`). Stripe's attach takes no metadata.

        Raises:
            CardDeclined: the card was declined while it was checked.
            StripeInvalidRequest: it is attached to a customer already, or used up.
        """
        with translated():
            pm = self._client.v1.payment_methods.attach(
                payment_method,
                params={"customer": customer_id},
                options={"idempotency_key": key},
            )
        return _payment_method_card(pm)

    def detach_payment_method(self, payment_method: str) -> None:
        """Detach a PaymentMethod from its customer.

        Raises:
            StripeNotFound: no such PaymentMethod.
            StripeInvalidRequest: it is not attached (any more).
        """
        with translated():
            self._client.v1.payment_methods.detach(payment_method)

    def create_setup_intent(
        self, key: str, *, customer_id: str, usage: str, metadata: dict[str, str]
    ) -> SetupOutcome:
        with translated():
            seti = self._client.v1.setup_intents.create(
                params={
                    "customer": customer_id,
                    "usage": usage,
                    "payment_method_types": ["card"],
                    "metadata": metadata,
                },  # type: ignore[arg-type]
                options={"idempotency_key": key},
            )
        return SetupOutcome(str(seti.id), str(seti.client_secret), str(seti.status))

    def find_setup_intent(
        self, *, customer_id: str, event_id: str, generation: int | None = None
    ) -> SetupOutcome | None:
        """The SetupIntent an event (of `generation`; None: any) created for the customer,
        found by its metadata (after the key expired)."""
        with translated():
            page = self._client.v1.setup_intents.list(
                params={"customer": customer_id, "limit": 100}
            )
            for seti in page.auto_paging_iter():
                if made_by(seti, event_id, generation):
                    return SetupOutcome(str(seti.id), str(seti.client_secret), str(seti.status))
        return None

    # ---- PaymentIntents ---------------------------------------------------------------

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
        """Create and confirm a PaymentIntent off-session (the customer is not there).
        Stripe's 402 `authentication_required` is no error here: it returns the
        PaymentIntent (requires_payment_method, `error_code` authentication_required), to
        be completed by the customer on-session.

        Raises:
            CardDeclined: any other decline (with the charge Stripe made).
        """
        params: dict[str, Any] = {
            "amount": amount,
            "currency": currency,
            "customer": customer_id,
            "payment_method": payment_method,
            "payment_method_types": ["card"],
            "confirm": True,
            "off_session": True,
            "metadata": metadata,
        }
        if description:
            params["description"] = description
        try:
            with translated_except_card_errors():
                pi = self._client.v1.payment_intents.create(
                    params=params,  # type: ignore[arg-type]
                    options={"idempotency_key": key},
                )
        except stripe.CardError as exc:
            error = exc.error
            intent = getattr(error, "payment_intent", None) if error is not None else None
            if exc.code == "authentication_required" and intent is not None:
                return intent_outcome(intent, error=error)
            raise translate(exc) from None
        return intent_outcome(pi)

    def retrieve_payment_intent(self, intent_id: str) -> IntentOutcome:
        with translated():
            pi = self._client.v1.payment_intents.retrieve(intent_id)
        return intent_outcome(pi)

    def cancel_payment_intent(self, key: str, intent_id: str, reason: str) -> IntentOutcome:
        """Cancel a PaymentIntent that has not succeeded.

        Raises:
            StripeInvalidRequest: it can no longer be canceled (it succeeded meanwhile).
        """
        with translated():
            pi = self._client.v1.payment_intents.cancel(
                intent_id,
                params={"cancellation_reason": reason},
                options={"idempotency_key": key},
            )
        return intent_outcome(pi)

    def find_payment_intent(
        self,
        *,
        customer_id: str,
        event_id: str,
        generation: int | None = None,
        succeeded: bool = False,
    ) -> IntentOutcome | None:
        """The PaymentIntent an event (of `generation`; None: any) created, found by its
        metadata (after the key expired); with `succeeded`, only a succeeded one."""
        with translated():
            page = self._client.v1.payment_intents.list(
                params={"customer": customer_id, "limit": 100}
            )
            for pi in page.auto_paging_iter():
                if not made_by(pi, event_id, generation):
                    continue
                if succeeded and str(pi.status) != "succeeded":
                    continue
                return intent_outcome(pi)
        return None

    # ---- Refunds ------------------------------------------------------------------------

    def create_refund(
        self,
        key: str,
        *,
        charge_id: str,
        amount: int,
        reason: str | None,
        metadata: dict[str, str],
    ) -> RefundOutcome:
        """Refund `amount` of a charge.

        Raises:
            PermanentError: `refund_exceeds_charge` when Stripe holds less to refund than
                asked (refunded outside payworker, e.g. on the dashboard).
        """
        params: dict[str, Any] = {"charge": charge_id, "amount": amount, "metadata": metadata}
        if reason:
            params["reason"] = reason
        with translated():
            refund = self._client.v1.refunds.create(
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": key},
            )
        return refund_outcome(refund)

    def find_refund(
        self, *, charge_id: str, event_id: str, generation: int | None = None
    ) -> RefundOutcome | None:
        """The refund an event (of `generation`; None: any) made of a charge, found by its
        metadata (after the key expired)."""
        with translated():
            page = self._client.v1.refunds.list(params={"charge": charge_id, "limit": 100})
            for refund in page.auto_paging_iter():
                if made_by(refund, event_id, generation):
                    return refund_outcome(refund)
        return None

    def retrieve_refund(self, refund_id: str) -> RefundOutcome:
        with translated():
            refund = self._client.v1.refunds.retrieve(refund_id)
        return refund_outcome(refund)


def _payment_method_card(pm: Any) -> PaymentMethodCard:
    """A card PaymentMethod as payworker reads it: its card (`card_id` the pm id) and owner."""
    card = getattr(pm, "card", None)
    if getattr(pm, "type", None) != "card" or card is None:
        raise StripeInvalidRequest(f"payment method {pm.id} is not a card")
    details = CardDetails(**{**card_details(card).__dict__, "card_id": str(pm.id)})
    owner = getattr(pm, "customer", None)
    if owner is not None and not isinstance(owner, str):
        owner = getattr(owner, "id", None)
    return PaymentMethodCard(details, owner)
