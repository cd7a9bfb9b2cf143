"""The in-process Stripe's Refunds (see fake_gateway.py for how it behaves):
a mixin of `FakeGateway`, which keeps its objects and records its calls."""

from __future__ import annotations


class FakeRefunds:
    """Refunds, with the methods of `tasks.gateway.StripeGateway`."""
