"""The fake stands in for `StripeGateway` only while it has the same face: every public
method, with the same parameters and return annotation."""

from __future__ import annotations

import inspect

from tasks.gateway import StripeGateway
from tests.inprocess.fake_gateway import FakeGateway

# Not a Stripe operation: how a real gateway is built.
NOT_OPERATIONS = {"build"}


def operations(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_") and name not in NOT_OPERATIONS
    }


def test_the_fake_has_every_gateway_method_with_its_signature() -> None:
    # Given the real gateway's Stripe operations
    real = operations(StripeGateway)

    # When the fake's are compared with them
    fake = {name: signature for name, signature in operations(FakeGateway).items() if name in real}

    # Then each one is there, with the same parameters and return type
    assert fake == real
