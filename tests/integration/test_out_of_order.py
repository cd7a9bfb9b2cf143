"""Messages that arrive before their prerequisite wait for it (retrying with backoff) and
succeed once it is processed; past the waiting window they fail with a clear code."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from sqlalchemy import text

TERMINAL = ("succeeded", "failed", "dead")
SHORT_WINDOW = 3


def _uid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:10]}"


def _rows(engine: Any, event_ids: list[str]) -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        found = conn.execute(
            text("SELECT * FROM payment_events WHERE event_id = ANY(:ids)"), {"ids": event_ids}
        ).mappings()
        return {row["event_id"]: dict(row) for row in found}


def _wait_waiting(engine: Any, event_id: str, timeout: float = 15) -> dict[str, Any]:
    """Wait until the event has been tried and is waiting for its prerequisite."""
    deadline = time.monotonic() + timeout
    row: dict[str, Any] = {}
    while time.monotonic() < deadline:
        row = _rows(engine, [event_id]).get(event_id, {})
        if row.get("attempts", 0) >= 1 and row.get("last_error"):
            return row
        time.sleep(0.05)
    raise AssertionError(f"{event_id} never started waiting: {row}")


def _stripe_posts(stripe_fake: Any, event_id: str) -> list[dict[str, Any]]:
    return [
        r for r in stripe_fake.requests(method="POST")
        if (r["idempotency_key"] or "").startswith(f"pw:{event_id}:")
    ]


@pytest.fixture(scope="module")
def short_worker(start_worker):
    """A worker whose out-of-order messages wait only SHORT_WINDOW seconds."""
    return start_worker(concurrency=2, PAYWORKER_PREREQUISITE_WAIT_SECONDS=str(SHORT_WINDOW))


def test_charge_before_registration_and_card_waits_then_succeeds(
    publish, wait_for, engine, stripe_fake, ids
):
    # Given a charge for a user that is neither registered nor has a card yet
    user, reg, tok, chg = ids("ooo-user"), ids("ooo-reg"), ids("ooo-tok"), ids("ooo-chg")
    publish("charge_requested", event_id=chg, user_id=user, amount=1500, currency="usd")
    waiting = _wait_waiting(engine, chg)
    assert waiting["status"] not in TERMINAL, waiting
    assert "customer" in waiting["last_error"]
    time.sleep(2)  # several backoff rounds pass while it waits
    # When registration and the card arrive afterwards
    publish("user_registered", event_id=reg, user_id=user, email="late@example.com")
    token = stripe_fake.create_card_token("4242424242424242")
    publish("card_token_received", event_id=tok, user_id=user, token=token)
    rows = wait_for(reg, tok, chg, timeout=20)
    # Then the charge succeeds, exactly once, on the card that arrived late
    assert rows[chg]["status"] == "succeeded", rows[chg]
    assert rows[chg]["attempts"] > 1, rows[chg]
    assert rows[chg]["result"]["card_id"] == rows[tok]["result"]["card_id"]
    customer_id = rows[reg]["result"]["customer_id"]
    charges = stripe_fake.list_charges(customer_id)
    assert [c["metadata"]["event_id"] for c in charges] == [chg]
    assert len([p for p in _stripe_posts(stripe_fake, chg) if not p["replayed"]]) == 1


def test_card_before_registration_waits_then_succeeds(
    publish, wait_for, engine, stripe_fake, ids
):
    # Given a card token for a user that is not registered yet
    user, reg, tok = ids("ooo-user2"), ids("ooo-reg2"), ids("ooo-tok2")
    token = stripe_fake.create_card_token("5555555555554444")
    publish("card_token_received", event_id=tok, user_id=user, token=token)
    waiting = _wait_waiting(engine, tok)
    assert waiting["status"] not in TERMINAL, waiting
    # (nothing was attached while the customer is unknown)
    assert _stripe_posts(stripe_fake, tok) == []
    time.sleep(2)
    # When the registration arrives
    publish("user_registered", event_id=reg, user_id=user, email="late2@example.com")
    rows = wait_for(reg, tok, timeout=20)
    # Then the card is attached to the new customer and becomes the default
    assert rows[tok]["status"] == "succeeded", rows[tok]
    assert rows[tok]["result"]["is_default"] is True
    cards = stripe_fake.list_cards(rows[reg]["result"]["customer_id"])
    assert [c["id"] for c in cards] == [rows[tok]["result"]["card_id"]]


@pytest.mark.parametrize("message_type", ["default_card_changed", "card_removed"])
def test_unknown_card_waits_then_fails_card_not_found(
    message_type, upstream, short_worker, engine, stripe_fake, wait_for, ids
):
    # Given a registered user (card ids come from Stripe, so a card that is still on its
    # way looks exactly like an unknown card id)
    user, reg = ids("ooo-user3"), ids("ooo-reg3")
    upstream.send_task("payments.user_registered", queue=short_worker.queue,
                       kwargs={"event_id": reg, "user_id": user, "email": "c@example.com"})
    wait_for(reg)
    # When a message names a card that never arrives
    event_id = ids(f"ooo-{message_type}")
    upstream.send_task(f"payments.{message_type}", queue=short_worker.queue, kwargs={
        "event_id": event_id, "user_id": user, "card_id": f"card_never{uuid.uuid4().hex[:12]}",
    })
    waiting = _wait_waiting(engine, event_id)
    assert waiting["status"] not in TERMINAL, waiting
    row = wait_for(event_id, timeout=SHORT_WINDOW + 8)[event_id]
    # Then it waited for the window, retrying, and failed card_not_found without Stripe
    assert row["status"] == "failed" and row["error_code"] == "card_not_found", row
    assert row["attempts"] > 1, row
    assert (row["completed_at"] - row["created_at"]).total_seconds() >= SHORT_WINDOW - 0.2
    assert _stripe_posts(stripe_fake, event_id) == []
