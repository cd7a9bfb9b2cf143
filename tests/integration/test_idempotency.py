"""One event_id, one effect: redeliveries (sequential or concurrent) and conflicting payloads
against a real worker, Postgres, Redis and the Stripe fake over HTTP."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, text

from stripe_fake import FakeStripe

CHARGES = "^/v1/payment_intents$"
CUSTOMERS = "^/v1/customers$"


pytestmark = pytest.mark.usefixtures("no_faults")


@pytest.fixture
def customer_with_card(
    publish: Callable[..., str], wait_for: Callable[..., Any], engine: Engine,
    stripe_fake: FakeStripe, ids: Callable[[str], str],
) -> Callable[..., tuple[str, str]]:
    """Factory: a registered user with one default card; returns (user_id, customer_id)."""

    def make(number: str = "4242424242424242") -> tuple[str, str]:
        user, reg, tok = ids("user"), ids("reg"), ids("tok")
        publish("user_registered", event_id=reg, user_id=user, email="ada@example.com")
        publish("card_token_received", event_id=tok, user_id=user,
                token=stripe_fake.create_card_token(number))
        rows = wait_for(reg, tok)
        assert {r["status"] for r in rows.values()} == {"succeeded"}, rows
        return user, rows[reg]["result"]["customer_id"]

    return make


def log_lines(worker: Any, *fragments: str) -> list[str]:
    """Lines of the worker log that contain every fragment (fields in any order)."""
    return [line for line in worker.log().splitlines() if all(f in line for f in fragments)]


def wait_for_log(worker: Any, *fragments: str, timeout: float = 30) -> list[str]:
    """Wait until a line of the worker log contains every fragment; returns such lines."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = log_lines(worker, *fragments)
        if lines:
            return lines
        time.sleep(0.1)
    raise AssertionError(f"no log line with {fragments!r} within {timeout}s")


def one(engine: Engine, sql: str, **params: Any) -> dict[str, Any]:
    with engine.connect() as conn:
        return dict(conn.execute(text(sql), params).mappings().one())


def event_row(engine: Engine, event_id: str) -> dict[str, Any]:
    return one(engine, "SELECT * FROM payment_events WHERE event_id = :e", e=event_id)


def charge_row(engine: Engine, event_id: str) -> dict[str, Any]:
    return one(engine, "SELECT * FROM charges WHERE event_id = :e", e=event_id)


def posts_with_key(stripe_fake: FakeStripe, path: str, key: str) -> list[dict[str, Any]]:
    return [r for r in stripe_fake.requests(method="POST", path=path)
            if r["idempotency_key"] == key]


def customers_of_user(stripe_fake: FakeStripe, user: str) -> list[dict[str, Any]]:
    return [c for c in stripe_fake.list_customers()
            if (c.get("metadata") or {}).get("user_id") == user]


# ---- charge_requested redelivered ------------------------------------------------------


def test_sequential_redeliveries_charge_once_and_keep_the_first_outcome(
    publish, wait_for, engine, stripe_fake, worker, ids, customer_with_card
):
    # Given a charge event that has succeeded once
    user, customer = customer_with_card()
    chg = ids("chg")
    message = {"event_id": chg, "user_id": user, "amount": 1500, "currency": "usd"}
    publish("charge_requested", **message)
    wait_for(chg)
    first = event_row(engine, chg)
    assert first["status"] == "succeeded", first

    # When the broker delivers the very same message twice more, one after the other
    for _ in range(2):
        task_id = publish("charge_requested", **message)
        wait_for_log(worker, "duplicate delivery ignored", f"event_id={chg}",
                     f"task_id={task_id}")

    # Then Stripe saw one charge request and holds one charge,
    assert len(posts_with_key(stripe_fake, "/v1/payment_intents", f"pw:{chg}:payment_intent")) == 1
    stripe_charges = stripe_fake.list_charges(customer)
    assert [c["metadata"]["event_id"] for c in stripe_charges] == [chg]
    # and the ledger row and the charges row are exactly as the first delivery left them
    assert event_row(engine, chg) == first
    charge = charge_row(engine, chg)
    assert charge["status"] == "succeeded"
    assert charge["stripe_charge_id"] == stripe_charges[0]["id"] == first["result"]["charge_id"]


def test_concurrent_redeliveries_charge_once(
    publish, wait_for, engine, stripe_fake, worker, ids, customer_with_card
):
    # Given a user with a card, and a Stripe slow enough that deliveries overlap
    user, customer = customer_with_card()
    chg = ids("chg")
    stripe_fake.inject(method="POST", path=CHARGES, delay=1.5, when="before", times=1)

    # When the same charge message is delivered three times at once (concurrency 4)
    message = {"event_id": chg, "user_id": user, "amount": 2500, "currency": "eur"}
    task_ids = [publish("charge_requested", **message) for _ in range(3)]
    row = wait_for(chg)[chg]

    # Then one delivery charged and the two others found the event in progress and stepped back
    assert row["status"] == "succeeded", row
    finished = [t for t in task_ids if log_lines(worker, "finished", f"task_id={t}")]
    assert len(finished) == 1, worker.log()
    for task_id in set(task_ids) - set(finished):
        wait_for_log(worker, "duplicate delivery ignored", f"event_id={chg}",
                     f"task_id={task_id}")
    assert log_lines(worker, "in progress elsewhere", f"event_id={chg}")
    # and Stripe received a single request and holds a single charge
    assert len(posts_with_key(stripe_fake, "/v1/payment_intents", f"pw:{chg}:payment_intent")) == 1
    stripe_charges = stripe_fake.list_charges(customer)
    assert len(stripe_charges) == 1 and stripe_charges[0]["status"] == "succeeded"
    assert charge_row(engine, chg)["stripe_charge_id"] == stripe_charges[0]["id"]


def test_redelivery_after_a_decline_keeps_the_failure_without_calling_stripe(
    publish, wait_for, engine, stripe_fake, worker, ids, customer_with_card
):
    # Given a charge that failed permanently (the card is declined at charge time)
    user, _ = customer_with_card("4000000000000341")
    chg = ids("chg")
    message = {"event_id": chg, "user_id": user, "amount": 1500, "currency": "usd"}
    publish("charge_requested", **message)
    wait_for(chg)
    first, first_charge = event_row(engine, chg), charge_row(engine, chg)
    assert (first["status"], first["error_code"]) == ("failed", "card_declined"), first

    # When the same message is delivered again
    task_id = publish("charge_requested", **message)
    wait_for_log(worker, "duplicate delivery ignored", f"event_id={chg}", f"task_id={task_id}")

    # Then the failure stands as it was, and Stripe was not asked a second time
    assert event_row(engine, chg) == first
    assert charge_row(engine, chg) == first_charge
    assert len(posts_with_key(stripe_fake, "/v1/payment_intents", f"pw:{chg}:payment_intent")) == 1


# ---- same event_id, different payload ------------------------------------------------


def test_conflicting_payload_after_success_is_rejected_and_first_stands(
    publish, wait_for, engine, stripe_fake, worker, ids, customer_with_card
):
    # Given a charge of 1500 that succeeded
    user, customer = customer_with_card()
    chg = ids("chg")
    publish("charge_requested", event_id=chg, user_id=user, amount=1500, currency="usd")
    wait_for(chg)
    first_event, first_charge = event_row(engine, chg), charge_row(engine, chg)
    assert first_event["status"] == "succeeded", first_event

    # When the same event_id arrives with another amount
    task_id = publish("charge_requested", event_id=chg, user_id=user, amount=9900,
                      currency="usd")

    # Then that delivery fails as an idempotency conflict, loudly
    wait_for_log(worker, f"[{task_id}] raised expected: IdempotencyConflict")
    assert log_lines(worker, "idempotency conflict", f"event_id={chg}", f"task_id={task_id}")
    # and the first outcome is untouched, in Postgres and on Stripe
    assert event_row(engine, chg) == first_event
    assert first_event["payload"]["amount"] == 1500
    assert charge_row(engine, chg) == first_charge
    assert [c["amount"] for c in stripe_fake.list_charges(customer)] == [1500]


def test_conflicting_payload_while_first_in_flight_is_rejected(
    publish, wait_for, engine, stripe_fake, worker, ids, customer_with_card
):
    # Given a charge of 1500 whose Stripe call is still in flight (slow, but within the
    # worker's 2 s client timeout)
    user, customer = customer_with_card()
    chg = ids("chg")
    stripe_fake.inject(method="POST", path=CHARGES, delay=1.5, when="before", times=1)
    publish("charge_requested", event_id=chg, user_id=user, amount=1500, currency="usd")
    deadline = time.monotonic() + 15
    while event_row_or_none(engine, chg).get("recovery_point") != "intent_creating":
        assert time.monotonic() < deadline, "the first delivery never reached Stripe"
        time.sleep(0.05)

    # When the same event_id arrives with another amount meanwhile
    task_id = publish("charge_requested", event_id=chg, user_id=user, amount=9900,
                      currency="usd")

    # Then the newcomer is rejected as a conflict
    wait_for_log(worker, f"[{task_id}] raised expected: IdempotencyConflict")
    assert log_lines(worker, "idempotency conflict", f"event_id={chg}", f"task_id={task_id}")
    # and the first delivery completes with its own amount, charged once
    row = wait_for(chg)[chg]
    assert row["status"] == "succeeded", row
    assert row["payload"]["amount"] == 1500 and row["result"]["amount"] == 1500
    assert row["attempts"] == 1
    assert charge_row(engine, chg)["amount"] == 1500
    assert [c["amount"] for c in stripe_fake.list_charges(customer)] == [1500]


def test_same_event_id_for_another_message_type_is_rejected(
    publish, wait_for, engine, stripe_fake, worker, ids, customer_with_card
):
    # Given a user whose user_registered event succeeded
    user, customer = customer_with_card()
    reg = ids("shared")
    publish("user_registered", event_id=reg, user_id=user, email="ada@example.com")
    first = wait_for(reg)[reg]
    assert first["status"] == "succeeded", first

    # When a charge_requested arrives under the same event_id
    task_id = publish("charge_requested", event_id=reg, user_id=user, amount=1500,
                      currency="usd")

    # Then it is rejected as a conflict; the registration stands and nothing is charged
    wait_for_log(worker, f"[{task_id}] raised expected: IdempotencyConflict")
    assert event_row(engine, reg) == first
    assert posts_with_key(stripe_fake, "/v1/payment_intents", f"pw:{reg}:payment_intent") == []
    assert stripe_fake.list_charges(customer) == []
    with engine.connect() as conn:
        assert conn.execute(
            text("SELECT count(*) FROM charges WHERE event_id = :e"), {"e": reg}
        ).scalar_one() == 0


def event_row_or_none(engine: Engine, event_id: str) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT * FROM payment_events WHERE event_id = :e"), {"e": event_id}
        ).mappings().one_or_none()
    return dict(row) if row else {}


# ---- user_registered twice -----------------------------------------------------------


def test_second_registration_of_a_user_reuses_the_customer(
    publish, wait_for, engine, stripe_fake, ids
):
    # Given a user whose registration succeeded
    user, reg1, reg2 = ids("user"), ids("reg1"), ids("reg2")
    publish("user_registered", event_id=reg1, user_id=user, email="ada@example.com")
    first = wait_for(reg1)[reg1]
    assert first["status"] == "succeeded" and first["result"]["existing"] is False, first

    # When another user_registered event arrives for the same user
    publish("user_registered", event_id=reg2, user_id=user, email="ada@example.com")
    second = wait_for(reg2)[reg2]

    # Then it succeeds with the same customer, marked as existing,
    assert second["status"] == "succeeded", second
    assert second["result"] == {"customer_id": first["result"]["customer_id"], "existing": True}
    # without any create on Stripe: the user has exactly one Stripe customer
    assert posts_with_key(stripe_fake, "/v1/customers", f"pw:{reg2}:customer") == []
    assert [c["id"] for c in customers_of_user(stripe_fake, user)] == [
        first["result"]["customer_id"]
    ]


def test_concurrent_registrations_of_a_user_create_one_customer(
    publish, wait_for, engine, stripe_fake, ids
):
    # Given a Stripe slow enough to create customers that two registrations overlap
    user, reg1, reg2 = ids("user"), ids("reg1"), ids("reg2")
    stripe_fake.inject(method="POST", path=CUSTOMERS, delay=1.5, when="before", times=1)

    # When two user_registered events for the same user are published at once
    publish("user_registered", event_id=reg1, user_id=user, email="ada@example.com")
    publish("user_registered", event_id=reg2, user_id=user, email="ada@example.com")
    rows = wait_for(reg1, reg2)

    # Then both succeed, one creating the customer and the other adopting it
    assert {r["status"] for r in rows.values()} == {"succeeded"}, rows
    results = sorted((r["result"] for r in rows.values()), key=lambda r: r["existing"])
    assert [r["existing"] for r in results] == [False, True]
    assert results[0]["customer_id"] == results[1]["customer_id"]
    # and exactly one Stripe customer and one customers row exist for the user
    assert [c["id"] for c in customers_of_user(stripe_fake, user)] == [results[0]["customer_id"]]
    customer = one(engine, "SELECT * FROM customers WHERE user_id = :u", u=user)
    assert customer["stripe_customer_id"] == results[0]["customer_id"]
