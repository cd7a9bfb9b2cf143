"""Chaos 2: SIGKILL of a whole worker (main process and pool children) at
each recovery point of each workflow, then a fresh worker: exactly one Stripe object and
one final outcome per event.

How each window is hit (honestly):

- "before the call": the checkpoint is committed and the request has reached the Stripe
  fake, which holds it (a "before" fault: delay, then 503) without running it. The kill
  lands while the worker waits for the answer, so Stripe has done nothing. The evidence is
  that the fault fired, the ledger holds the recovery point and the dead worker's lease,
  and Stripe has no object for the event.
- "after the call, before the commit": the fake runs the request and then holds the answer
  (an "after" delay). The kill lands while the worker waits, so the object exists on Stripe
  but the ledger still says the earlier recovery point (and the dead worker's lease).
- "after the commit, before the ack": the victim worker reaches the broker through a TCP
  proxy of the test. The proxy is frozen while the worker waits for a slow (1 s) Stripe
  answer: the worker commits `succeeded`, and its ack goes into the frozen connection. The
  whole group is then SIGKILLed and the held bytes are dropped, so the ack never reaches
  the broker (this works for any pool: threads, the default, or prefork). On Redis the
  test checks that the message is still in kombu's `unacked` hash. Its redelivery only
  comes after the visibility timeout (60 s), and the test does not wait for it: chaos 6
  covers duplicate deliveries. On RabbitMQ the message is requeued at once, and the test
  waits until the fresh worker has ignored it.

Every worker of the module runs with PAYWORKER_LEASE_SECONDS=6, PAYWORKER_SWEEP_SECONDS=1
and PAYWORKER_VISIBILITY_TIMEOUT=60. The fresh worker finishes the event through the
sweeper, which re-drives it when the dead worker's lease expires. The module keeps one live
worker on one queue: each test's rescuer is the next test's victim.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import text

from tests.chaos.harness.batches import VISA
from tests.chaos.harness.broker import FreezableProxy, unacked_event_ids
from tests.chaos.harness.stage import (
    HOLD,
    Stage,
    assert_held_by_dead_worker,
    assert_resumed,
    report,
    staged,
)
from tests.chaos.harness.watch import event_row, poll, wait_final
from tests.chaos.harness.world import (
    cards_of_event,
    charges_of_event,
    pg_cards,
    pg_charge,
    pg_default,
    posts_with_key,
    stripe_customers_of,
)

pytestmark = pytest.mark.chaos

SECOND_CARD = "5555555555554444"
THIRD_CARD = "6011111111111117"


# ---- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stage(broker_url: str, tmp_path_factory: Any) -> Iterator[Stage]:
    # The module's charges are Charges API calls (test_recovery_points_modern.py kills
    # PaymentIntents, the default).
    with staged(broker_url, tmp_path_factory.mktemp("chaos-recovery"), "payworker_chaos_rp",
                PAYWORKER_CHARGE_API="charges") as stage:
        yield stage


@pytest.fixture(autouse=True)
def no_faults(stage: Stage) -> Iterator[None]:
    stage.fake.clear_faults()
    yield
    stage.fake.clear_faults()


@pytest.fixture
def user(stage: Stage) -> Callable[..., tuple[str, str, list[str]]]:
    """Factory: a registered user with `cards` cards (the first is the default); returns
    (user_id, customer_id, card ids in attach order)."""

    def make(cards: int = 0) -> tuple[str, str, list[str]]:
        user_id = f"rp-{uuid.uuid4().hex[:10]}"
        events = [stage.publish("user_registered", event_id=f"{user_id}-reg", user_id=user_id,
                                email=f"{user_id}@example.com")]
        for i, number in enumerate((VISA, SECOND_CARD)[:cards]):
            events.append(stage.publish(
                "card_token_received", event_id=f"{user_id}-card{i}", user_id=user_id,
                token=stage.fake.create_card_token(number)))
            # one at a time, so that the first card is the default
            rows = wait_final(stage.engine, events, 30)
            assert all(r["status"] == "succeeded" for r in rows.values()), rows
        rows = wait_final(stage.engine, events, 30)
        assert all(r["status"] == "succeeded" for r in rows.values()), rows
        customer = rows[f"{user_id}-reg"]["result"]["customer_id"]
        card_ids = [rows[f"{user_id}-card{i}"]["result"]["card_id"] for i in range(cards)]
        return user_id, customer, card_ids

    return make


# ---- user_registered: customer_creating ------------------------------------------------------


def test_user_registered_killed_before_the_create_reaches_stripe(stage: Stage) -> None:
    # Given Stripe holds the next customer create without running it
    user_id = f"rp-{uuid.uuid4().hex[:10]}"
    event = f"{user_id}-reg"
    fault = stage.fake.inject(method="POST", path="^/v1/customers$", status=503, delay=HOLD,
                              when="before", times=1)
    stage.publish("user_registered", event_id=event, user_id=user_id,
                  email=f"{user_id}@example.com")

    # When the worker is killed while it waits for Stripe
    stage.wait_fired(fault)
    killed_at = stage.kill()
    assert_held_by_dead_worker(event_row(stage.engine, event), "customer_creating")
    assert stripe_customers_of(stage.fake, user_id) == []

    # Then a fresh worker creates the customer once
    row, took = stage.recover(event, killed_at)
    customers = stripe_customers_of(stage.fake, user_id)
    report(stage, "user_registered/customer_creating/before-call", row, took,
           max(0, len(customers) - 1))
    assert_resumed(row, "customer_creating")
    assert [c["id"] for c in customers] == [row["result"]["customer_id"]]
    with stage.engine.connect() as conn:
        stored = conn.execute(text("SELECT stripe_customer_id FROM customers WHERE user_id = :u"),
                              {"u": user_id}).scalar_one()
    assert stored == customers[0]["id"]


def test_user_registered_killed_after_stripe_created_the_customer(stage: Stage) -> None:
    # Given Stripe creates the next customer but holds the answer
    user_id = f"rp-{uuid.uuid4().hex[:10]}"
    event = f"{user_id}-reg"
    fault = stage.fake.inject(method="POST", path="^/v1/customers$", delay=HOLD, when="after",
                              times=1)
    stage.publish("user_registered", event_id=event, user_id=user_id,
                  email=f"{user_id}@example.com")

    # When the worker is killed before it could record the customer
    stage.wait_fired(fault)
    killed_at = stage.kill()
    assert_held_by_dead_worker(event_row(stage.engine, event), "customer_creating")
    created = stripe_customers_of(stage.fake, user_id)
    assert len(created) == 1

    # Then a fresh worker replays the same create and adopts that customer
    row, took = stage.recover(event, killed_at)
    customers = stripe_customers_of(stage.fake, user_id)
    report(stage, "user_registered/customer_creating/after-call", row, took,
           max(0, len(customers) - 1))
    assert_resumed(row, "customer_creating")
    assert [c["id"] for c in customers] == [created[0]["id"]] == [row["result"]["customer_id"]]
    replays = [r for r in posts_with_key(stage.fake, "/v1/customers", f"pw:{event}:customer")
               if r["replayed"]]
    assert replays, "the resume did not repeat the create with the same key"


# ---- card_token_received: card_attaching, card_attached --------------------------------------


def test_card_killed_before_the_attach_reaches_stripe(stage: Stage, user) -> None:
    # Given a registered user without cards, and Stripe holding the next attach unrun
    user_id, customer, _ = user(cards=0)
    event = f"{user_id}-new-card"
    fault = stage.fake.inject(method="POST", path=f"^/v1/customers/{customer}/sources$",
                              status=503, delay=HOLD, when="before", times=1)
    stage.publish("card_token_received", event_id=event, user_id=user_id,
                  token=stage.fake.create_card_token(VISA))

    # When the worker is killed while it waits for Stripe
    stage.wait_fired(fault)
    killed_at = stage.kill()
    assert_held_by_dead_worker(event_row(stage.engine, event), "card_attaching")
    assert stage.fake.list_cards(customer) == []

    # Then a fresh worker (the token is unsealed from the ledger) attaches it once
    row, took = stage.recover(event, killed_at)
    cards = cards_of_event(stage.fake, customer, event)
    report(stage, "card_token_received/card_attaching/before-call", row, took,
           max(0, len(cards) - 1))
    assert_resumed(row, "card_attaching")
    assert [c["id"] for c in cards] == [row["result"]["card_id"]]
    assert [c["stripe_card_id"] for c in pg_cards(stage.engine, user_id)] == [cards[0]["id"]]
    assert stage.fake.get_customer(customer)["default_source"] == cards[0]["id"]
    assert pg_default(stage.engine, user_id) == cards[0]["id"]


def test_card_killed_after_stripe_attached_it(stage: Stage, user) -> None:
    # Given a registered user without cards, and Stripe attaching the next card but holding
    # the answer
    user_id, customer, _ = user(cards=0)
    event = f"{user_id}-new-card"
    fault = stage.fake.inject(method="POST", path=f"^/v1/customers/{customer}/sources$",
                              delay=HOLD, when="after", times=1)
    stage.publish("card_token_received", event_id=event, user_id=user_id,
                  token=stage.fake.create_card_token(VISA))

    # When the worker is killed before it could record the card
    stage.wait_fired(fault)
    killed_at = stage.kill()
    assert_held_by_dead_worker(event_row(stage.engine, event), "card_attaching")
    attached = cards_of_event(stage.fake, customer, event)
    assert len(attached) == 1 and pg_cards(stage.engine, user_id) == []

    # Then a fresh worker replays the attach (before any dedup check) and records that card
    row, took = stage.recover(event, killed_at)
    cards = stage.fake.list_cards(customer)
    report(stage, "card_token_received/card_attaching/after-call", row, took,
           max(0, len(cards) - 1))
    assert_resumed(row, "card_attaching")
    assert [c["id"] for c in cards] == [attached[0]["id"]] == [row["result"]["card_id"]]
    assert row["result"]["duplicate"] is False
    assert [c["stripe_card_id"] for c in pg_cards(stage.engine, user_id)] == [cards[0]["id"]]
    assert stage.fake.get_customer(customer)["default_source"] == cards[0]["id"]
    assert pg_default(stage.engine, user_id) == cards[0]["id"]


def test_card_killed_after_stripe_made_it_the_default(stage: Stage, user) -> None:
    # Given a user with one (default) card, a second card sent with make_default, and
    # Stripe switching the default but holding the answer
    user_id, customer, (old_card,) = user(cards=1)
    event = f"{user_id}-new-default"
    fault = stage.fake.inject(method="POST", path=f"^/v1/customers/{customer}$", delay=HOLD,
                              when="after", times=1)
    stage.publish("card_token_received", event_id=event, user_id=user_id,
                  token=stage.fake.create_card_token(THIRD_CARD), make_default=True)

    # When the worker is killed after the card was recorded (card_attached) and Stripe has
    # switched the default, but before Postgres did
    stage.wait_fired(fault)
    killed_at = stage.kill()
    assert_held_by_dead_worker(event_row(stage.engine, event), "card_attached")
    new_card = cards_of_event(stage.fake, customer, event)
    assert len(new_card) == 1
    assert stage.fake.get_customer(customer)["default_source"] == new_card[0]["id"]
    assert pg_default(stage.engine, user_id) == old_card

    # Then a fresh worker only finishes the default switch: one new card, defaults agree
    row, took = stage.recover(event, killed_at)
    cards = stage.fake.list_cards(customer)
    mine = cards_of_event(stage.fake, customer, event)
    report(stage, "card_token_received/card_attached+make_default/after-call", row, took,
           max(0, len(mine) - 1))
    assert_resumed(row, "card_attached")
    assert sorted(c["id"] for c in cards) == sorted([old_card, new_card[0]["id"]])
    assert row["result"]["card_id"] == new_card[0]["id"] and row["result"]["is_default"]
    assert stage.fake.get_customer(customer)["default_source"] == new_card[0]["id"]
    assert pg_default(stage.engine, user_id) == new_card[0]["id"]
    assert len(pg_cards(stage.engine, user_id)) == 2


# ---- charge_requested: charge_creating -------------------------------------------------------


def _request_charge(stage: Stage, user_id: str, event: str) -> None:
    stage.publish("charge_requested", event_id=event, user_id=user_id, amount=4200,
                  currency="usd")


def test_charge_killed_before_the_create_reaches_stripe(stage: Stage, user) -> None:
    # Given a user with a card, and Stripe holding the next charge create unrun
    user_id, customer, (card,) = user(cards=1)
    event = f"{user_id}-charge"
    fault = stage.fake.inject(method="POST", path="^/v1/charges$", status=503, delay=HOLD,
                              when="before", times=1)
    _request_charge(stage, user_id, event)

    # When the worker is killed while it waits for Stripe
    stage.wait_fired(fault)
    killed_at = stage.kill()
    assert_held_by_dead_worker(event_row(stage.engine, event), "charge_creating")
    assert pg_charge(stage.engine, event)["status"] == "pending"
    assert charges_of_event(stage.fake, customer, event) == []

    # Then a fresh worker charges once and records it
    row, took = stage.recover(event, killed_at)
    charges = charges_of_event(stage.fake, customer, event)
    report(stage, "charge_requested/charge_creating/before-call", row, took,
           max(0, len(charges) - 1))
    assert_resumed(row, "charge_creating")
    assert [c["id"] for c in charges] == [row["result"]["charge_id"]]
    stored = pg_charge(stage.engine, event)
    assert stored["status"] == "succeeded" and stored["stripe_charge_id"] == charges[0]["id"]
    assert charges[0]["payment_method"] == card == stored["stripe_card_id"]


def test_charge_killed_after_stripe_created_it(stage: Stage, user) -> None:
    # Given a user with a card, and Stripe creating the next charge but holding the answer
    user_id, customer, _ = user(cards=1)
    event = f"{user_id}-charge"
    fault = stage.fake.inject(method="POST", path="^/v1/charges$", delay=HOLD, when="after",
                              times=1)
    _request_charge(stage, user_id, event)

    # When the worker is killed before it could record the charge
    stage.wait_fired(fault)
    killed_at = stage.kill()
    assert_held_by_dead_worker(event_row(stage.engine, event), "charge_creating")
    created = charges_of_event(stage.fake, customer, event)
    assert len(created) == 1 and pg_charge(stage.engine, event)["status"] == "pending"

    # Then a fresh worker replays the create with the same key: still one charge
    row, took = stage.recover(event, killed_at)
    charges = charges_of_event(stage.fake, customer, event)
    report(stage, "charge_requested/charge_creating/after-call", row, took,
           max(0, len(charges) - 1))
    assert_resumed(row, "charge_creating")
    assert [c["id"] for c in charges] == [created[0]["id"]] == [row["result"]["charge_id"]]
    stored = pg_charge(stage.engine, event)
    assert stored["status"] == "succeeded" and stored["stripe_charge_id"] == charges[0]["id"]
    replays = [r for r in posts_with_key(stage.fake, "/v1/charges", f"pw:{event}:charge")
               if r["replayed"]]
    assert replays, "the resume did not repeat the charge with the same key"


def test_charge_killed_after_the_commit_before_the_ack(stage: Stage, user) -> None:
    # Given a user with a card, a worker whose broker connection runs through a proxy that
    # can hold its traffic, and Stripe answering the next charge after 1 s
    user_id, customer, _ = user(cards=1)
    proxy = FreezableProxy(stage.broker_url)
    try:
        stage.replace_live(CELERY_BROKER_URL=proxy.url)
        event = f"{user_id}-charge"
        fault = stage.fake.inject(method="POST", path="^/v1/charges$", delay=1.0,
                                  when="after", times=1)
        _request_charge(stage, user_id, event)

        # When the broker connection freezes while the worker waits for Stripe, the worker
        # commits the outcome, its ack is held by the proxy, and then the worker is killed
        # and what the proxy held is dropped
        stage.wait_fired(fault)
        proxy.freeze()
        poll(lambda: (event_row(stage.engine, event) or {}).get("status") == "succeeded", 15,
             "the worker to commit the outcome")
        time.sleep(0.5)  # the ack is written to the broker connection, and held
        killed_at = stage.kill()
        proxy.discard()
        assert proxy.held_bytes > 0, "the worker sent nothing after the commit"
    finally:
        proxy.close()
    if stage.broker_url.startswith("redis"):
        # Redis keeps the delivered message in kombu's `unacked` hash until the visibility
        # timeout; the test does not wait the 60 s for its redelivery
        assert event in unacked_event_ids(stage.broker_url), "the message was acked"
        redelivered = "not awaited (visibility timeout 60 s)"
    else:
        # RabbitMQ requeues the unacked message as soon as the connection drops
        assert stage.live is not None
        rescuer = stage.live.wait_ready()
        poll(lambda: any(event in line and "duplicate delivery ignored" in line
                         for line in rescuer.log().splitlines()), 30,
             "the redelivered message to be ignored")
        redelivered = "ignored as a duplicate"

    # Then the event keeps its one outcome and its one charge; the fresh worker adds nothing
    row, took = stage.recover(event, killed_at)
    assert stage.live is not None
    stage.live.wait_ready()
    time.sleep(2)  # two sweeps of the fresh worker
    row = event_row(stage.engine, event) or {}
    charges = charges_of_event(stage.fake, customer, event)
    report(stage, "charge_requested/succeeded/after-commit-before-ack", row, took,
           max(0, len(charges) - 1))
    print(f"[chaos]   held after the commit: {proxy.held_bytes} bytes; redelivery: {redelivered}")
    assert row["status"] == "succeeded" and row["attempts"] == 1 and row["redrives"] == 0, row
    assert [c["id"] for c in charges] == [row["result"]["charge_id"]]
    assert pg_charge(stage.engine, event)["stripe_charge_id"] == charges[0]["id"]


# ---- card_removed: card_removing -------------------------------------------------------------


def test_card_removal_killed_after_stripe_deleted_the_card(stage: Stage, user) -> None:
    # Given a user with two cards (the first is the default), and Stripe deleting the first
    # but holding the answer
    user_id, customer, (first, second) = user(cards=2)
    event = f"{user_id}-remove"
    fault = stage.fake.inject(method="DELETE", path=f"^/v1/customers/{customer}/sources/{first}$",
                              delay=HOLD, when="after", times=1)
    stage.publish("card_removed", event_id=event, user_id=user_id, card_id=first)

    # When the worker is killed before it could record the removal
    stage.wait_fired(fault)
    killed_at = stage.kill()
    assert_held_by_dead_worker(event_row(stage.engine, event), "card_removing")
    assert [c["id"] for c in stage.fake.list_cards(customer)] == [second]
    assert pg_default(stage.engine, user_id) == first

    # Then a fresh worker repeats the delete (404: already gone) and mirrors Stripe's default
    row, took = stage.recover(event, killed_at)
    report(stage, "card_removed/card_removing/after-call", row, took, 0)
    assert_resumed(row, "card_removing")
    assert row["result"] == {"card_id": first, "already_removed": False,
                             "default_card_id": second}
    assert [c["id"] for c in stage.fake.list_cards(customer)] == [second]
    assert stage.fake.get_customer(customer)["default_source"] == second
    removed = {c["stripe_card_id"]: c["removed_at"] for c in pg_cards(stage.engine, user_id)}
    assert removed[first] is not None and removed[second] is None
    assert pg_default(stage.engine, user_id) == second


def test_card_removal_killed_before_the_delete_reaches_stripe(stage: Stage, user) -> None:
    # Given a user with two cards, and Stripe holding the delete of the second unrun
    user_id, customer, (first, second) = user(cards=2)
    event = f"{user_id}-remove"
    fault = stage.fake.inject(method="DELETE",
                              path=f"^/v1/customers/{customer}/sources/{second}$",
                              status=503, delay=HOLD, when="before", times=1)
    stage.publish("card_removed", event_id=event, user_id=user_id, card_id=second)

    # When the worker is killed while it waits for Stripe
    stage.wait_fired(fault)
    killed_at = stage.kill()
    assert_held_by_dead_worker(event_row(stage.engine, event), "card_removing")
    assert sorted(c["id"] for c in stage.fake.list_cards(customer)) == sorted([first, second])

    # Then a fresh worker deletes it; the default stays the first card on both sides
    row, took = stage.recover(event, killed_at)
    report(stage, "card_removed/card_removing/before-call", row, took, 0)
    assert_resumed(row, "card_removing")
    assert [c["id"] for c in stage.fake.list_cards(customer)] == [first]
    assert stage.fake.get_customer(customer)["default_source"] == first
    assert pg_default(stage.engine, user_id) == first


# ---- default_card_changed: default_setting ---------------------------------------------------


def test_default_switch_killed_after_stripe_switched(stage: Stage, user) -> None:
    # Given a user with two cards, and Stripe switching the default but holding the answer
    user_id, customer, (first, second) = user(cards=2)
    event = f"{user_id}-default"
    fault = stage.fake.inject(method="POST", path=f"^/v1/customers/{customer}$", delay=HOLD,
                              when="after", times=1)
    stage.publish("default_card_changed", event_id=event, user_id=user_id, card_id=second)

    # When the worker is killed before Postgres followed
    stage.wait_fired(fault)
    killed_at = stage.kill()
    assert_held_by_dead_worker(event_row(stage.engine, event), "default_setting")
    assert stage.fake.get_customer(customer)["default_source"] == second
    assert pg_default(stage.engine, user_id) == first

    # Then a fresh worker replays the switch and Postgres follows
    row, took = stage.recover(event, killed_at)
    report(stage, "default_card_changed/default_setting/after-call", row, took, 0)
    assert_resumed(row, "default_setting")
    assert row["result"] == {"card_id": second, "previous_default_card_id": first}
    assert stage.fake.get_customer(customer)["default_source"] == second
    assert pg_default(stage.engine, user_id) == second
    assert len(stage.fake.list_cards(customer)) == 2
