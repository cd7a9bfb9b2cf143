"""The only package that talks to Stripe. Every write carries the caller's idempotency key
(tasks/idempotency.py); every SDK error leaves here as one of our own errors
(tasks/gateway/errors.py).

One exception to "the only importer of `stripe`": tasks/stripe_http.py extends the SDK's
HTTP client (rate limit, 429 feedback, request observer, run deadline); only this package
builds that client."""

from __future__ import annotations

import stripe
import stripe._util

from tasks.gateway.legacy import LegacyCalls
from tasks.gateway.modern import ModernCalls
from tasks.gateway.objects import (
    CardDetails,
    ChargeOutcome,
    IntentOutcome,
    PaymentMethodCard,
    RefundOutcome,
    SetupOutcome,
)
from tasks.ratelimit import Limiter
from tasks.stripe_http import LimitedRequestsClient, Observer

__all__ = [
    "CardDetails",
    "ChargeOutcome",
    "IntentOutcome",
    "PaymentMethodCard",
    "RefundOutcome",
    "SetupOutcome",
    "StripeGateway",
]


class StripeGateway(LegacyCalls, ModernCalls):
    """Stripe operations payworker needs, over one `StripeClient`."""

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


def _silence_sdk_console() -> None:
    """Stop the SDK printing its request log to stderr. With `STRIPE_LOG=debug` (or `info`)
    in the environment, or `stripe.log` set, it prints every request's parameters (card
    tokens, descriptions) straight to stderr, past our redacting log filter. Its lines still
    reach the `stripe` logger, through our handlers, redacted."""
    stripe.log = None
    stripe._util.STRIPE_LOG = None  # read from the environment when the SDK is imported
