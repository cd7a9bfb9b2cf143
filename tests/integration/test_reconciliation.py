"""Reconciliation after Stripe's idempotency window: a write whose outcome was lost and
that is retried after Stripe may have forgotten its key is looked up by our metadata and
adopted, never sent again. The window is a setting, so the test makes it one second."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from stripe_fake import FakeStripe
from tests.conftest import WorkerProcess

VISA = "4242424242424242"


pytestmark = pytest.mark.usefixtures("no_faults")


@pytest.fixture(scope="module")
def short_window_worker(start_worker: Callable[..., WorkerProcess]) -> WorkerProcess:
    # The first retry comes 1.5 s to 3 s after the lost answer: past the 1 s window.
    return start_worker(
        PAYWORKER_STRIPE_KEY_WINDOW_SECONDS="1",
        PAYWORKER_RETRY_BACKOFF_BASE="3",
        PAYWORKER_RETRY_BACKOFF_MAX="3",
    )


def posts(stripe_fake: FakeStripe, path: str, key: str) -> list[dict[str, Any]]:
    return [r for r in stripe_fake.requests(method="POST", path=path)
            if r["idempotency_key"] == key]


def test_lost_customer_create_is_adopted_not_repeated(
    publish, wait_for, stripe_fake, ids, short_window_worker
):
    # Given Stripe creates the customer but the worker only sees a 500
    user, reg = ids("user"), ids("reg")
    stripe_fake.inject(method="POST", path="^/v1/customers$", status=500, when="after", times=1)
    # When the registration is processed and retried after the key window
    publish("user_registered", queue=short_window_worker.queue, event_id=reg, user_id=user,
            email=f"{user}@example.com")
    row = wait_for(reg)[reg]
    # Then the customer was found by its metadata and adopted: one create, one customer
    assert row["status"] == "succeeded", row
    assert len(posts(stripe_fake, "/v1/customers", f"pw:{reg}:customer")) == 1
    assert stripe_fake.count(method="GET", path="/v1/customers") >= 1
    mine = [c for c in stripe_fake.list_customers() if c["metadata"].get("user_id") == user]
    assert [c["id"] for c in mine] == [row["result"]["customer_id"]]


def test_lost_card_attach_is_adopted_not_repeated(
    publish, wait_for, stripe_fake, ids, short_window_worker
):
    # Given a registered user, and Stripe attaching the card while the worker sees a 500
    q = short_window_worker.queue
    user, reg, tok = ids("user"), ids("reg"), ids("tok")
    publish("user_registered", queue=q, event_id=reg, user_id=user, email="a@example.com")
    customer = wait_for(reg)[reg]["result"]["customer_id"]
    path = f"^/v1/customers/{customer}/sources$"
    stripe_fake.inject(method="POST", path=path, status=500, when="after", times=1)
    # When the card event is retried after the key window
    publish("card_token_received", queue=q, event_id=tok, user_id=user,
            token=stripe_fake.create_card_token(VISA))
    row = wait_for(tok)[tok]
    # Then the attached card was found by its metadata: one attach, one card, recorded
    assert row["status"] == "succeeded", row
    assert len(posts(stripe_fake, f"/v1/customers/{customer}/sources", f"pw:{tok}:attach")) == 1
    cards = stripe_fake.list_cards(customer)
    assert [c["id"] for c in cards] == [row["result"]["card_id"]]


def test_lost_charge_is_adopted_not_repeated(
    publish, wait_for, stripe_fake, ids, short_window_worker
):
    # Given a user with a card, and Stripe charging while the worker sees a 500
    q = short_window_worker.queue
    user, reg, tok, chg = ids("user"), ids("reg"), ids("tok"), ids("chg")
    publish("user_registered", queue=q, event_id=reg, user_id=user, email="a@example.com")
    publish("card_token_received", queue=q, event_id=tok, user_id=user,
            token=stripe_fake.create_card_token(VISA))
    customer = wait_for(reg, tok)[reg]["result"]["customer_id"]
    stripe_fake.inject(method="POST", path="^/v1/payment_intents$", status=500, when="after",
                       times=1)
    # When the charge is retried after the key window
    publish("charge_requested", queue=q, event_id=chg, user_id=user, amount=1234,
            currency="usd")
    row = wait_for(chg)[chg]
    # Then the charge was found by its metadata and adopted: one POST, one Stripe charge
    assert row["status"] == "succeeded", row
    assert len(posts(stripe_fake, "/v1/payment_intents", f"pw:{chg}:payment_intent")) == 1
    assert stripe_fake.count(method="GET", path="/v1/payment_intents") >= 1
    charges = stripe_fake.list_charges(customer)
    assert [c["id"] for c in charges] == [row["result"]["charge_id"]]
