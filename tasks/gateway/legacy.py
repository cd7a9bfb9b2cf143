"""The Stripe calls of the legacy path: customers, stripe.js tokens, card sources and
Charges (and the customer's default card, of either kind)."""

from __future__ import annotations

from typing import Any

import stripe

from core.errors import StripeInvalidRequest
from tasks.gateway.errors import translated
from tasks.gateway.objects import (
    CardDetails,
    ChargeOutcome,
    card_details,
    charge_outcome,
    made_by,
)


class LegacyCalls:
    """Customers, tokens, sources and Charges, over one `StripeClient`."""

    def __init__(self, client: stripe.StripeClient) -> None:
        self._client = client

    def create_customer(
        self, key: str, *, email: str, name: str | None, metadata: dict[str, str]
    ) -> str:
        params: dict[str, Any] = {"email": email, "metadata": metadata}
        if name:
            params["name"] = name
        with translated():
            customer = self._client.v1.customers.create(
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": key},
            )
        return str(customer.id)

    def find_customer(
        self, *, email: str, event_id: str, generation: int | None = None
    ) -> str | None:
        """The customer an event (of `generation`; None: any) created, found by its metadata
        (after the key expired)."""
        with translated():
            page = self._client.v1.customers.list(params={"email": email, "limit": 100})
            for customer in page.auto_paging_iter():
                if made_by(customer, event_id, generation):
                    return str(customer.id)
        return None

    def find_card(
        self, *, customer_id: str, event_id: str, generation: int | None = None
    ) -> CardDetails | None:
        """The card an event (of `generation`; None: any) attached, found by its metadata
        (after the key expired)."""
        with translated():
            page = self._client.v1.customers.payment_sources.list(
                customer_id, params={"object": "card", "limit": 100}
            )
            for card in page.auto_paging_iter():
                if made_by(card, event_id, generation):
                    return card_details(card)
        return None

    def find_charge(
        self,
        *,
        customer_id: str,
        event_id: str,
        generation: int | None = None,
        succeeded: bool = False,
    ) -> ChargeOutcome | None:
        """The charge an event (of `generation`; None: any) created, found by its metadata
        (after the key expired); with `succeeded`, only a succeeded one (before a forced
        replay: the customer must not pay twice). Stripe lists the newest first."""
        with translated():
            page = self._client.v1.charges.list(params={"customer": customer_id, "limit": 100})
            for charge in page.auto_paging_iter():
                if not made_by(charge, event_id, generation):
                    continue
                if succeeded and str(charge.status) != "succeeded":
                    continue
                return charge_outcome(charge)
        return None

    def retrieve_token(self, token: str) -> CardDetails:
        """The card behind a stripe.js token, read before anything is attached."""
        with translated():
            tok = self._client.v1.tokens.retrieve(token)
        card = getattr(tok, "card", None)
        if card is None or not getattr(card, "fingerprint", None):
            raise StripeInvalidRequest("the token does not carry a card")
        return card_details(card)

    def attach_card(
        self, key: str, *, customer_id: str, token: str, metadata: dict[str, str]
    ) -> CardDetails:
        with translated():
            card = self._client.v1.customers.payment_sources.create(
                customer_id,
                params={"source": token, "metadata": metadata},
                options={"idempotency_key": key},
            )
        return card_details(card)

    def delete_card(self, *, customer_id: str, card_id: str) -> None:
        """Detach and delete a card. Raises StripeNotFound when it is already gone."""
        with translated():
            self._client.v1.customers.payment_sources.delete(customer_id, card_id)

    def set_default_card(self, key: str, *, customer_id: str, card_id: str) -> None:
        """Make a card the customer's default: a PaymentMethod (`pm_...`) becomes
        `invoice_settings.default_payment_method`; a legacy card (`card_...`) becomes
        `default_source`, and the invoice default is cleared so that it is the one used."""
        params: dict[str, Any]
        if card_id.startswith("pm_"):
            params = {"invoice_settings": {"default_payment_method": card_id}}
        else:
            params = {"default_source": card_id, "invoice_settings": {"default_payment_method": ""}}
        with translated():
            self._client.v1.customers.update(
                customer_id,
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": key},
            )

    def default_card(self, customer_id: str) -> str | None:
        """The customer's default card on Stripe as Stripe sees it now: the invoice default
        PaymentMethod when set, else the default source."""
        with translated():
            customer = self._client.v1.customers.retrieve(customer_id)
        settings = getattr(customer, "invoice_settings", None)
        for default in (
            getattr(settings, "default_payment_method", None) if settings is not None else None,
            getattr(customer, "default_source", None),
        ):
            found = default if isinstance(default, str) else getattr(default, "id", None)
            if found:
                return str(found)
        return None

    def create_charge(
        self,
        key: str,
        *,
        customer_id: str,
        card_id: str,
        amount: int,
        currency: str,
        description: str | None,
        metadata: dict[str, str],
    ) -> ChargeOutcome:
        """Charge a card of the customer. Raises CardDeclined on a decline."""
        params: dict[str, Any] = {
            "amount": amount,
            "currency": currency,
            "customer": customer_id,
            "source": card_id,
            "metadata": metadata,
        }
        if description:
            params["description"] = description
        with translated():
            charge = self._client.v1.charges.create(
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": key},
            )
        return charge_outcome(charge)
