"""Stripe misbehaving (declines, 5xx, 429, 409, timeouts, a rejected key) and Postgres
dropping connections: every event still ends with exactly one charge, or none, and the
right outcome. Real worker subprocesses, Postgres, Redis, and the Stripe fake over HTTP."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, text

from stripe_fake import FakeStripe

CHARGES = "^/v1/payment_intents$"
VISA = "4242424242424242"
# Attaches fine, then every charge on it is declined (localstripe).
DECLINED_AT_CHARGE = "4000000000000341"


pytestmark = pytest.mark.usefixtures("no_faults")


@pytest.fixture
def customer_with_card(
    publish: Callable[..., str], wait_for: Callable[..., Any], stripe_fake: FakeStripe,
    ids: Callable[[str], str],
) -> Callable[..., tuple[str, str]]:
    """Factory: a registered user with one default card; returns (user_id, customer_id)."""

    def make(number: str = VISA, queue: str | None = None) -> tuple[str, str]:
        user, reg, tok = ids("user"), ids("reg"), ids("tok")
        publish("user_registered", queue=queue, event_id=reg, user_id=user,
                email="ada@example.com")
        publish("card_token_received", queue=queue, event_id=tok, user_id=user,
                token=stripe_fake.create_card_token(number))
        rows = wait_for(reg, tok)
        assert {r["status"] for r in rows.values()} == {"succeeded"}, rows
        return user, rows[reg]["result"]["customer_id"]

    return make


def charge_row(engine: Engine, event_id: str) -> dict[str, Any]:
    with engine.connect() as conn:
        return dict(conn.execute(
            text("SELECT * FROM charges WHERE event_id = :e"), {"e": event_id}
        ).mappings().one())


def charge_posts(stripe_fake: FakeStripe, event_id: str) -> list[dict[str, Any]]:
    """The worker's POST /v1/payment_intents requests for one event, in order."""
    key = f"pw:{event_id}:payment_intent"
    return [r for r in stripe_fake.requests(method="POST", path="/v1/payment_intents")
            if r["idempotency_key"] == key]


def assert_charged_once(
    stripe_fake: FakeStripe, engine: Engine, customer: str, event_id: str
) -> dict[str, Any]:
    """Exactly one Stripe charge for the event, and Postgres points at it."""
    charges = [c for c in stripe_fake.list_charges(customer)
               if c["metadata"].get("event_id") == event_id]
    assert len(charges) == 1, charges
    row = charge_row(engine, event_id)
    assert row["status"] == "succeeded" and row["stripe_charge_id"] == charges[0]["id"], row
    return charges[0]


def request_charge(publish: Callable[..., str], ids: Callable[[str], str], user: str,
                   queue: str | None = None) -> str:
    event = ids("chg")
    publish("charge_requested", queue=queue, event_id=event, user_id=user, amount=2000,
            currency="usd")
    return event


# ---- declines --------------------------------------------------------------------------


def test_decline_fails_the_event_once_without_retry(
    customer_with_card, publish, wait_for, engine, stripe_fake, ids
):
    # Given a user whose card attaches but is declined at charge time
    user, _ = customer_with_card(DECLINED_AT_CHARGE)

    # When a charge is requested
    event = request_charge(publish, ids, user)
    row = wait_for(event)[event]

    # Then the event fails as a decline on its first attempt
    assert row["status"] == "failed", row
    assert row["error_code"] == "card_declined"
    assert row["attempts"] == 1 and row["transient_failures"] == 0
    # and the charge is recorded as failed with Stripe's failure code
    charge = charge_row(engine, event)
    assert charge["status"] == "failed" and charge["failure_code"] == "card_declined", charge
    # and Stripe was asked exactly once
    assert [r["status"] for r in charge_posts(stripe_fake, event)] == [402]


# ---- 5xx, timeouts, 429, 409: retried with the same key --------------------------------


def test_500_before_the_charge_is_retried_to_one_charge(
    customer_with_card, publish, wait_for, engine, stripe_fake, ids
):
    # Given a user with a card, and Stripe failing the next charge request before running it
    user, customer = customer_with_card()
    stripe_fake.inject(method="POST", path=CHARGES, status=500, when="before", times=1)

    # When a charge is requested
    event = request_charge(publish, ids, user)
    row = wait_for(event)[event]

    # Then it is retried and succeeds, with exactly one charge on Stripe
    assert row["status"] == "succeeded", row
    assert row["transient_failures"] >= 1
    assert [r["status"] for r in charge_posts(stripe_fake, event)] == [500, 200]
    assert_charged_once(stripe_fake, engine, customer, event)


def test_500_after_the_charge_is_replayed_to_one_charge(
    customer_with_card, publish, wait_for, engine, stripe_fake, ids
):
    # Given a user with a card, and Stripe creating the next charge but answering 500
    user, customer = customer_with_card()
    stripe_fake.inject(method="POST", path=CHARGES, status=500, when="after", times=1)

    # When a charge is requested
    event = request_charge(publish, ids, user)
    row = wait_for(event)[event]

    # Then the retry repeats the same key and gets the first charge back, not a second one
    assert row["status"] == "succeeded", row
    posts = charge_posts(stripe_fake, event)
    assert [(r["status"], r["replayed"]) for r in posts] == [(500, False), (200, True)]
    charge = assert_charged_once(stripe_fake, engine, customer, event)
    assert row["result"]["charge_id"] == charge["id"]


def test_response_slower_than_the_client_timeout_gives_one_charge(
    customer_with_card, publish, wait_for, engine, stripe_fake, ids
):
    # Given a user with a card, and Stripe creating the next charge but answering after 4 s,
    # beyond the worker's 2 s client timeout
    user, customer = customer_with_card()
    stripe_fake.inject(method="POST", path=CHARGES, delay=4, when="after", times=1)

    # When a charge is requested
    event = request_charge(publish, ids, user)
    row = wait_for(event)[event]

    # Then the timed-out attempt is retried with the same key and replayed: one charge
    assert row["status"] == "succeeded", row
    assert row["attempts"] >= 2 and row["transient_failures"] >= 1
    assert any(r["replayed"] for r in charge_posts(stripe_fake, event))
    assert_charged_once(stripe_fake, engine, customer, event)


@pytest.mark.parametrize(
    "headers", [{}, {"Stripe-Should-Retry": "true"}], ids=["plain", "should-retry"]
)
def test_rate_limit_is_retried_to_one_charge(
    headers, customer_with_card, publish, wait_for, engine, stripe_fake, ids
):
    # Given a user with a card, and Stripe rate-limiting the next charge request
    user, customer = customer_with_card()
    stripe_fake.inject(method="POST", path=CHARGES, status=429, when="before", times=1,
                       headers=headers)

    # When a charge is requested
    event = request_charge(publish, ids, user)
    row = wait_for(event)[event]

    # Then the 429 is retried and the event ends with one charge
    assert row["status"] == "succeeded", row
    assert row["transient_failures"] >= 1
    assert [r["status"] for r in charge_posts(stripe_fake, event)] == [429, 200]
    assert_charged_once(stripe_fake, engine, customer, event)


def test_idempotency_key_in_use_is_retried_to_one_charge(
    customer_with_card, publish, wait_for, engine, stripe_fake, ids
):
    # Given a user with a card, and Stripe holding the next charge request (and its key)
    # for 3.5 s: the worker times out at 2 s and its retry finds the key in use
    user, customer = customer_with_card()
    stripe_fake.inject(method="POST", path=CHARGES, delay=3.5, when="before", times=1)

    # When a charge is requested
    event = request_charge(publish, ids, user)
    row = wait_for(event)[event]

    # Then Stripe answered 409 idempotency_key_in_use at least once, the worker retried,
    # and the event ends with the one charge the first request made
    assert row["status"] == "succeeded", row
    statuses = [r["status"] for r in charge_posts(stripe_fake, event)]
    assert 409 in statuses, statuses
    assert_charged_once(stripe_fake, engine, customer, event)


def test_permanent_500_ends_dead_with_the_charge_pending(
    start_worker, customer_with_card, publish, wait_for, engine, stripe_fake, ids
):
    # Given a worker with a budget of 3 transient failures, and Stripe failing every charge
    worker = start_worker(PAYWORKER_MAX_ATTEMPTS="3")
    user, customer = customer_with_card(queue=worker.queue)
    stripe_fake.inject(method="POST", path=CHARGES, status=500, when="before")

    # When a charge is requested
    event = request_charge(publish, ids, user, queue=worker.queue)
    row = wait_for(event, timeout=30)[event]

    # Then the event is dead after its budget, with the outcome left unknown (pending)
    assert row["status"] == "dead", row
    assert row["error_code"] == "retries_exhausted"
    assert row["transient_failures"] == 3
    charge = charge_row(engine, event)
    assert charge["status"] == "pending" and charge["stripe_charge_id"] is None, charge
    assert [r["status"] for r in charge_posts(stripe_fake, event)] == [500, 500, 500]
    assert stripe_fake.list_charges(customer) == []


# ---- a rejected API key ----------------------------------------------------------------


def test_rejected_api_key_is_a_configuration_fault_not_a_failure(
    start_worker, publish, engine, stripe_fake, ids
):
    # Given a worker whose Stripe key the fake rejects with 401
    key = "wrong-key-7f3a9c2e"
    worker = start_worker(STRIPE_API_KEY=key)

    # When a user_registered event reaches it
    user, reg = ids("user"), ids("reg")
    publish("user_registered", queue=worker.queue, event_id=reg, user_id=user,
            email="ada@example.com")
    time.sleep(4)  # the worker retries a configuration fault every 1.5 s

    # Then the event is neither failed nor dead, spends no retry budget, and is retried
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT * FROM payment_events WHERE event_id = :e"), {"e": reg}
        ).mappings().one()
    assert row["status"] in ("received", "processing"), dict(row)
    assert row["transient_failures"] == 0
    assert row["attempts"] >= 2
    # and the worker shouts about its configuration without printing the key, and lives on
    log = worker.log()
    assert "CONFIGURATION FAULT" in log
    assert key not in log
    assert worker.alive()
    assert not [c for c in stripe_fake.list_customers()
                if (c.get("metadata") or {}).get("user_id") == user]
    worker.stop()


# ---- Postgres drops the worker's connections -------------------------------------------


def kill_connections_mid_transaction(engine: Engine, hold: float) -> int:
    """Freeze the workers inside their charges transactions (an exclusive table lock held
    for `hold` seconds), then terminate every other connection to the test database.
    Returns how many connections were terminated."""
    with engine.connect() as conn:
        conn.execute(text("LOCK TABLE charges IN EXCLUSIVE MODE"))
        time.sleep(hold)
        killed = conn.execute(text(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )).scalar_one()
        conn.rollback()
    engine.dispose()  # our own idle pooled connections were killed too
    return int(killed)


def test_database_connection_loss_mid_batch_charges_each_once(
    customer_with_card, publish, wait_for, engine, stripe_fake, worker, ids
):
    # Given a user with a card, and Stripe slow enough that a batch takes a few seconds
    user, customer = customer_with_card()
    stripe_fake.inject(method="POST", path=CHARGES, delay=0.2, when="after")

    # When 20 charges are requested and Postgres twice drops the workers' connections
    # while they are inside transactions (before and after their Stripe calls)
    events = [ids(f"chg{i}") for i in range(20)]
    for event in events:
        publish("charge_requested", event_id=event, user_id=user, amount=1000 + len(event),
                currency="usd")
    killed = 0
    for _ in range(2):
        time.sleep(0.4)
        killed += kill_connections_mid_transaction(engine, hold=0.6)
    rows = wait_for(*events, timeout=50)

    # Then the loss really interrupted work,
    assert killed > 0
    interrupted = [line for line in worker.log().splitlines()
                   if any(f"event_id={e} " in line for e in events)
                   and ("OperationalError" in line or "database unavailable" in line)]
    assert interrupted, "no task saw the connection loss: the test proves nothing"
    # (at least one after its charge was made: its retry had Stripe replay the charge)
    assert any(r["replayed"] for e in events for r in charge_posts(stripe_fake, e))
    # and every event succeeds, with exactly one Stripe charge each
    assert {e: r["status"] for e, r in rows.items()} == dict.fromkeys(events, "succeeded")
    stripe_charges = stripe_fake.list_charges(customer)
    assert sorted(c["metadata"]["event_id"] for c in stripe_charges) == sorted(events)
    for event in events:
        assert_charged_once(stripe_fake, engine, customer, event)
        created = [r for r in charge_posts(stripe_fake, event)
                   if r["status"] == 200 and not r["replayed"]]
        assert len(created) == 1, created
