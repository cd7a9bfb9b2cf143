"""The in-process Stripe's PaymentMethods and SetupIntents (see fake_gateway.py for how it behaves):
a mixin of `FakeGateway`, which keeps its objects and records its calls."""

from __future__ import annotations


class FakeCards:
    """PaymentMethods and SetupIntents, with the methods of `tasks.gateway.StripeGateway`."""
