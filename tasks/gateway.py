"""The only module that talks to Stripe. Every write carries the caller's idempotency key
(tasks/idempotency.py); every SDK error leaves here as one of our own errors (see
`_translate`).

One exception to "the only importer of `stripe`": tasks/stripe_http.py extends the SDK's
HTTP client (rate limit, 429 feedback, request observer, run deadline); only this module
builds that client."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import stripe
import stripe._util

from core.errors import (
    CardDeclined,
    ConfigurationFault,
    OutcomeUnknown,
    PayworkerError,
    PermanentError,
    StripeInvalidRequest,
    StripeNotFound,
    TransientError,
)
from core.redact import redact
from tasks.ratelimit import Limiter
from tasks.stripe_http import LimitedRequestsClient, Observer

# Invalid-request codes that are business outcomes of their own in our contract.
_OWN_CODES = {"amount_too_small", "amount_too_large"}


@dataclass(frozen=True)
class CardDetails:
    fingerprint: str
    brand: str | None
    last4: str | None
    exp_month: int | None
    exp_year: int | None
    card_id: str | None = None


@dataclass(frozen=True)
class ChargeOutcome:
    charge_id: str
    status: str
    failure_code: str | None
    failure_message: str | None
    decline_code: str | None


def _card(card: Any) -> CardDetails:
    return CardDetails(
        fingerprint=card.fingerprint,
        brand=getattr(card, "brand", None),
        last4=getattr(card, "last4", None),
        exp_month=getattr(card, "exp_month", None),
        exp_year=getattr(card, "exp_year", None),
        card_id=card.id if getattr(card, "object", None) == "card" else None,
    )


def _charge(charge: Any) -> ChargeOutcome:
    outcome = getattr(charge, "outcome", None)
    return ChargeOutcome(
        charge_id=str(charge.id),
        status=str(charge.status),
        failure_code=getattr(charge, "failure_code", None),
        failure_message=getattr(charge, "failure_message", None),
        decline_code=getattr(outcome, "reason", None) if outcome is not None else None,
    )


def _made_by(obj: Any, event_id: str, generation: int | None) -> bool:
    """True when `obj` carries our metadata of `event_id` and, unless `generation` is None,
    of that generation (objects of generation 0 carry no `generation` key)."""
    metadata = getattr(obj, "metadata", None)
    if metadata is None or getattr(metadata, "event_id", None) != event_id:
        return False
    return generation is None or str(getattr(metadata, "generation", "0")) == str(generation)


class StripeGateway:
    """Stripe operations payworker needs, over one `StripeClient`."""

    def __init__(self, client: stripe.StripeClient) -> None:
        self._client = client

    @classmethod
    def build(
        cls,
        api_key: str,
        *,
        api_base: str | None,
        timeout: float,
        network_retries: int,
        limiter: Limiter | None = None,
        observer: Observer | None = None,
    ) -> StripeGateway:
        """A gateway with its own HTTP client and timeout (no module globals); every request
        waits for a slot from `limiter` and is reported to `observer`."""
        _silence_sdk_console()
        http_client = LimitedRequestsClient(timeout=timeout, limiter=limiter, observer=observer)
        client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base} if api_base else None,
            max_network_retries=network_retries,
            http_client=http_client,
        )
        return cls(client)

    def create_customer(
        self, key: str, *, email: str, name: str | None, metadata: dict[str, str]
    ) -> str:
        params: dict[str, Any] = {"email": email, "metadata": metadata}
        if name:
            params["name"] = name
        with _translated():
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
        with _translated():
            page = self._client.v1.customers.list(params={"email": email, "limit": 100})
            for customer in page.auto_paging_iter():
                if _made_by(customer, event_id, generation):
                    return str(customer.id)
        return None

    def find_card(
        self, *, customer_id: str, event_id: str, generation: int | None = None
    ) -> CardDetails | None:
        """The card an event (of `generation`; None: any) attached, found by its metadata
        (after the key expired)."""
        with _translated():
            page = self._client.v1.customers.payment_sources.list(
                customer_id, params={"object": "card", "limit": 100}
            )
            for card in page.auto_paging_iter():
                if _made_by(card, event_id, generation):
                    return _card(card)
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
        with _translated():
            page = self._client.v1.charges.list(params={"customer": customer_id, "limit": 100})
            for charge in page.auto_paging_iter():
                if not _made_by(charge, event_id, generation):
                    continue
                if succeeded and str(charge.status) != "succeeded":
                    continue
                return _charge(charge)
        return None

    def retrieve_token(self, token: str) -> CardDetails:
        """The card behind a stripe.js token, read before anything is attached."""
        with _translated():
            tok = self._client.v1.tokens.retrieve(token)
        card = getattr(tok, "card", None)
        if card is None or not getattr(card, "fingerprint", None):
            raise StripeInvalidRequest("the token does not carry a card")
        return _card(card)

    def attach_card(
        self, key: str, *, customer_id: str, token: str, metadata: dict[str, str]
    ) -> CardDetails:
        with _translated():
            card = self._client.v1.customers.payment_sources.create(
                customer_id,
                params={"source": token, "metadata": metadata},
                options={"idempotency_key": key},
            )
        return _card(card)

    def delete_card(self, *, customer_id: str, card_id: str) -> None:
        """Detach and delete a card. Raises StripeNotFound when it is already gone."""
        with _translated():
            self._client.v1.customers.payment_sources.delete(customer_id, card_id)

    def set_default_card(self, key: str, *, customer_id: str, card_id: str) -> None:
        with _translated():
            self._client.v1.customers.update(
                customer_id,
                params={"default_source": card_id},
                options={"idempotency_key": key},
            )

    def default_card(self, customer_id: str) -> str | None:
        """The customer's default source on Stripe, as Stripe sees it now."""
        with _translated():
            customer = self._client.v1.customers.retrieve(customer_id)
        default = getattr(customer, "default_source", None)
        return default if isinstance(default, str) else getattr(default, "id", None)

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
        with _translated():
            charge = self._client.v1.charges.create(
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": key},
            )
        return _charge(charge)


def _silence_sdk_console() -> None:
    """Stop the SDK printing its request log to stderr. With `STRIPE_LOG=debug` (or `info`)
    in the environment, or `stripe.log` set, it prints every request's parameters (card
    tokens, descriptions) straight to stderr, past our redacting log filter. Its lines still
    reach the `stripe` logger, through our handlers, redacted."""
    stripe.log = None
    stripe._util.STRIPE_LOG = None  # read from the environment when the SDK is imported


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except stripe.StripeError as exc:
        raise _translate(exc) from None


def _translate(exc: stripe.StripeError) -> PayworkerError:
    """The single table from SDK errors to ours: retryable, permanent or configuration."""
    message = redact(getattr(exc, "user_message", None) or str(exc) or type(exc).__name__)
    request_id = getattr(exc, "request_id", None)
    status = exc.http_status
    if isinstance(exc, stripe.CardError):
        error = exc.error
        return CardDeclined(
            message,
            decline_code=getattr(error, "decline_code", None) if error else None,
            failure_code=exc.code,
            charge_id=getattr(error, "charge", None) if error else None,
            request_id=request_id,
        )
    if isinstance(exc, stripe.AuthenticationError | stripe.PermissionError):
        return ConfigurationFault(
            f"Stripe rejected the API key (HTTP {status}): {message}", request_id=request_id
        )
    if isinstance(exc, stripe.APIConnectionError):
        return OutcomeUnknown(f"no answer from Stripe: {message}", request_id=request_id)
    if isinstance(exc, stripe.RateLimitError) or status == 429:
        return TransientError(f"rate limited by Stripe: {message}", code="stripe_rate_limited")
    if status == 409 or (status is not None and status >= 500):
        return OutcomeUnknown(f"Stripe answered {status}: {message}", request_id=request_id)
    if _should_retry(exc):
        return TransientError(f"Stripe asked for a retry: {message}", code="stripe_retry")
    if isinstance(exc, stripe.InvalidRequestError | stripe.IdempotencyError):
        if exc.code in _OWN_CODES:
            return PermanentError(message, code=str(exc.code), request_id=request_id)
        if exc.code == "resource_missing" or status == 404:
            return StripeNotFound(message, request_id=request_id)
        return StripeInvalidRequest(message, request_id=request_id)
    return OutcomeUnknown(f"unexpected Stripe error: {message}", request_id=request_id)


def _should_retry(exc: stripe.StripeError) -> bool:
    headers = exc.headers or {}
    return str(headers.get("stripe-should-retry", headers.get("Stripe-Should-Retry"))) == "true"
