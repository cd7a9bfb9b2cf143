"""The single table from the SDK's errors to ours: retryable, permanent or configuration."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import stripe

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

# Invalid-request codes that are business outcomes of their own in our contract.
_OWN_CODES = {"amount_too_small", "amount_too_large"}
# Refund refusals: Stripe holds less to refund than asked.
_REFUND_CODES = {"charge_already_refunded"}


@contextmanager
def translated() -> Iterator[None]:
    try:
        yield
    except stripe.StripeError as exc:
        raise translate(exc) from None


@contextmanager
def translated_except_card_errors() -> Iterator[None]:
    """As `translated`, but a card error is left to the caller to read."""
    try:
        yield
    except stripe.CardError:
        raise
    except stripe.StripeError as exc:
        raise translate(exc) from None


def translate(exc: stripe.StripeError) -> PayworkerError:
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
            payment_intent_id=_intent_id(error),
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
        if exc.code in _REFUND_CODES:
            return PermanentError(message, code="refund_exceeds_charge", request_id=request_id)
        if exc.code == "resource_missing" or status == 404:
            return StripeNotFound(message, request_id=request_id)
        return StripeInvalidRequest(message, request_id=request_id)
    return OutcomeUnknown(f"unexpected Stripe error: {message}", request_id=request_id)


def _intent_id(error: Any) -> str | None:
    """The id of the PaymentIntent a card error carries (a declined confirmation)."""
    intent = getattr(error, "payment_intent", None) if error is not None else None
    if intent is None or isinstance(intent, str):
        return intent
    found = getattr(intent, "id", None)
    return str(found) if found is not None else None


def _should_retry(exc: stripe.StripeError) -> bool:
    headers = exc.headers or {}
    return str(headers.get("stripe-should-retry", headers.get("Stripe-Should-Retry"))) == "true"
