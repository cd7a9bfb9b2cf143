"""Chaos 2 on the modern path: SIGKILL of a whole worker at the recovery points of
payment_method_received (pm_attaching), of charge_requested through PaymentIntents (the
default PAYWORKER_CHARGE_API; intent_creating, then intent_watching for a card that needs
3-D Secure) and of refund_requested (refund_creating), then a fresh worker: one Stripe
effect per message (one attach, one PaymentIntent, one refund) and rows that agree.

The windows are hit as in test_recovery_points.py (see there): "before the call" holds the
request at the fake unrun (a "before" fault: delay, then 503), "after the call" runs it and
holds the answer (an "after" delay); the worker is killed while it waits, its successor
starts at once and finishes the event through the sweeper once the dead worker's lease ran
out. Every test ends with the world check of its user: Stripe and Postgres agree object by
object.

Workers: the chaos settings (lease 6 s, sweep 1 s), and PAYWORKER_ACTION_POLL_SECONDS=1 so
that a watched PaymentIntent is read again within a second or two.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.chaos.harness.batches import VISA
from tests.chaos.harness.stage import (
    HOLD,
    RECOVERY_TIMEOUT,
    Stage,
    assert_held_by_dead_worker,
    assert_resumed,
    report,
    staged,
)
from tests.chaos.harness.watch import event_row, poll, wait_final, wait_settled
from tests.chaos.harness.world import (
    attach_keys,
    check_world,
    intents_of_event,
    payment_methods_of,
    pg_cards,
    pg_charge,
    pg_default,
    pg_refund,
    posts_with_key,
    refunds_of_event,
)

pytestmark = pytest.mark.chaos

SECOND_CARD = "5555555555554444"
# Needs 3-D Secure on every payment (Stripe's testing page); attaches without it.
THREE_D_SECURE = "4000002760003184"
AMOUNT = 4200


@pytest.fixture(scope="module")
def stage(broker_url: str, tmp_path_factory: Any) -> Iterator[Stage]:
    with staged(broker_url, tmp_path_factory.mktemp("chaos-recovery-modern"),
                "payworker_chaos_rpm", PAYWORKER_ACTION_POLL_SECONDS="1") as stage:
        yield stage


@pytest.fixture(autouse=True)
def no_faults(stage: Stage) -> Iterator[None]:
    stage.fake.clear_faults()
    yield
    stage.fake.clear_faults()


def _succeeded(stage: Stage, events: list[str]) -> dict[str, dict[str, Any]]:
    rows = wait_final(stage.engine, events, 30)
    assert all(r["status"] == "succeeded" for r in rows.values()) and len(rows) == len(events), \
        rows
    return rows


@pytest.fixture
def user(stage: Stage) -> Callable[..., tuple[str, str, list[str]]]:
    """Factory: a registered user with a PaymentMethod card of each number given (the first
    is the default); returns (user_id, customer_id, pm ids)."""

    def make(*numbers: str) -> tuple[str, str, list[str]]:
        user_id = f"rpm-{uuid.uuid4().hex[:10]}"
        rows = _succeeded(stage, [stage.publish(
            "user_registered", event_id=f"{user_id}-reg", user_id=user_id,
            email=f"{user_id}@example.com")])
        pms = []
        for i, number in enumerate(numbers):  # one at a time: the first is the default
            pm = stage.fake.create_payment_method(number)
            _succeeded(stage, [stage.publish("payment_method_received",
                                             event_id=f"{user_id}-pm{i}", user_id=user_id,
                                             payment_method=pm)])
            pms.append(pm)
        return user_id, rows[f"{user_id}-reg"]["result"]["customer_id"], pms

    return make


def _charged(stage: Stage, user_id: str, amount: int = AMOUNT) -> str:
    """A succeeded PaymentIntent charge of the user's default card; its event id."""
    event = f"{user_id}-paid-{uuid.uuid4().hex[:4]}"
    _succeeded(stage, [stage.publish("charge_requested", event_id=event, user_id=user_id,
                                     amount=amount, currency="usd")])
    return event


def _world_agrees(stage: Stage, user_id: str) -> None:
    world = check_world(stage.engine, stage.fake, [user_id])
    assert world.ok, world.summary()


# ---- payment_method_received: pm_attaching ---------------------------------------------------


def test_payment_method_killed_before_the_attach_reaches_stripe(stage: Stage, user) -> None:
    # Given a registered user without cards, and Stripe holding the next attach unrun
    user_id, customer, _ = user()
    event, pm = f"{user_id}-new-pm", stage.fake.create_payment_method(VISA)
    fault = stage.fake.inject(method="POST", path=f"^/v1/payment_methods/{pm}/attach$",
                              status=503, delay=HOLD, when="before", times=1)
    stage.publish("payment_method_received", event_id=event, user_id=user_id,
                  payment_method=pm)

    # When the worker is killed while it waits for Stripe
    stage.wait_fired(fault)
    killed_at = stage.kill()
    assert_held_by_dead_worker(event_row(stage.engine, event), "pm_attaching")
    assert payment_methods_of(stage.fake, customer) == []

    # Then a fresh worker attaches it once, records it, and makes it the default
    row, took = stage.recover(event, killed_at)
    report(stage, "payment_method_received/pm_attaching/before-call", row, took,
           max(0, len(attach_keys(stage.fake, pm)) - 1))
    assert_resumed(row, "pm_attaching")
    assert row["result"]["card_id"] == pm and row["result"]["duplicate"] is False
    assert [p["id"] for p in payment_methods_of(stage.fake, customer)] == [pm]
    assert attach_keys(stage.fake, pm) == {f"pw:{event}:attach"}
    cards = pg_cards(stage.engine, user_id)
    assert [(c["stripe_card_id"], c["kind"]) for c in cards] == [(pm, "payment_method")]
    assert pg_default(stage.engine, user_id) == pm
    _world_agrees(stage, user_id)


def test_payment_method_killed_after_stripe_attached_it(stage: Stage, user) -> None:
    # Given a user with one PaymentMethod card, and Stripe attaching a second but holding
    # the answer
    user_id, customer, (first,) = user(VISA)
    event, pm = f"{user_id}-new-pm", stage.fake.create_payment_method(SECOND_CARD)
    fault = stage.fake.inject(method="POST", path=f"^/v1/payment_methods/{pm}/attach$",
                              delay=HOLD, when="after", times=1)
    stage.publish("payment_method_received", event_id=event, user_id=user_id,
                  payment_method=pm)

    # When the worker is killed before it could record the card
    stage.wait_fired(fault)
    killed_at = stage.kill()
    assert_held_by_dead_worker(event_row(stage.engine, event), "pm_attaching")
    assert sorted(p["id"] for p in payment_methods_of(stage.fake, customer)) == sorted([first, pm])
    assert [c["stripe_card_id"] for c in pg_cards(stage.engine, user_id)] == [first]

    # Then a fresh worker repeats the attach with the same key (Stripe replays it) and
    # records the card once; the default stays the first card
    row, took = stage.recover(event, killed_at)
    report(stage, "payment_method_received/pm_attaching/after-call", row, took,
           max(0, len(attach_keys(stage.fake, pm)) - 1))
    assert_resumed(row, "pm_attaching")
    assert row["result"]["card_id"] == pm and row["result"]["duplicate"] is False
    assert attach_keys(stage.fake, pm) == {f"pw:{event}:attach"}
    path = f"/v1/payment_methods/{pm}/attach"
    assert [r for r in posts_with_key(stage.fake, path, f"pw:{event}:attach") if r["replayed"]], \
        "the resume did not repeat the attach with the same key"
    assert sorted(c["stripe_card_id"] for c in pg_cards(stage.engine, user_id)) == sorted(
        [first, pm])
    assert pg_default(stage.engine, user_id) == first
    _world_agrees(stage, user_id)


# ---- charge_requested through a PaymentIntent: intent_creating, intent_watching -------------


def _request_charge(stage: Stage, user_id: str, event: str) -> None:
    stage.publish("charge_requested", event_id=event, user_id=user_id, amount=AMOUNT,
                  currency="usd")


def _assert_paid_once(stage: Stage, customer: str, event: str, card: str,
                      row: dict[str, Any]) -> dict[str, Any]:
    """One PaymentIntent for the event, succeeded with `card`, and the rows name it."""
    intents = intents_of_event(stage.fake, customer, event)
    assert len(intents) == 1, intents
    intent = intents[0]
    assert intent["status"] == "succeeded" and intent["payment_method"] == card, intent
    stored = pg_charge(stage.engine, event)
    assert stored is not None and stored["status"] == "succeeded", stored
    assert stored["payment_intent_id"] == intent["id"] == row["result"]["payment_intent_id"]
    assert stored["stripe_charge_id"] == intent["latest_charge"] == row["result"]["charge_id"]
    return intent


def test_intent_killed_before_the_create_reaches_stripe(stage: Stage, user) -> None:
    # Given a user with a PaymentMethod card, and Stripe holding the next PaymentIntent
    # create (and confirm) unrun
    user_id, customer, (card,) = user(VISA)
    event = f"{user_id}-charge"
    fault = stage.fake.inject(method="POST", path="^/v1/payment_intents$", status=503,
                              delay=HOLD, when="before", times=1)
    _request_charge(stage, user_id, event)

    # When the worker is killed while it waits for Stripe
    stage.wait_fired(fault)
    killed_at = stage.kill()
    assert_held_by_dead_worker(event_row(stage.engine, event), "intent_creating")
    assert pg_charge(stage.engine, event)["status"] == "pending"
    assert intents_of_event(stage.fake, customer, event) == []

    # Then a fresh worker pays once and records the PaymentIntent and its charge
    row, took = stage.recover(event, killed_at)
    intents = intents_of_event(stage.fake, customer, event)
    report(stage, "charge_requested/intent_creating/before-call", row, took,
           max(0, len(intents) - 1))
    assert_resumed(row, "intent_creating")
    _assert_paid_once(stage, customer, event, card, row)
    _world_agrees(stage, user_id)


def test_intent_killed_after_stripe_confirmed_it(stage: Stage, user) -> None:
    # Given a user with a PaymentMethod card, and Stripe creating and confirming the next
    # PaymentIntent but holding the answer
    user_id, customer, (card,) = user(VISA)
    event = f"{user_id}-charge"
    fault = stage.fake.inject(method="POST", path="^/v1/payment_intents$", delay=HOLD,
                              when="after", times=1)
    _request_charge(stage, user_id, event)

    # When the worker is killed before it could record the payment
    stage.wait_fired(fault)
    killed_at = stage.kill()
    assert_held_by_dead_worker(event_row(stage.engine, event), "intent_creating")
    created = intents_of_event(stage.fake, customer, event)
    assert [i["status"] for i in created] == ["succeeded"]
    assert pg_charge(stage.engine, event)["status"] == "pending"

    # Then a fresh worker replays the create with the same key: still one PaymentIntent,
    # one charge, and the rows name them
    row, took = stage.recover(event, killed_at)
    intents = intents_of_event(stage.fake, customer, event)
    report(stage, "charge_requested/intent_creating/after-call", row, took,
           max(0, len(intents) - 1))
    assert_resumed(row, "intent_creating")
    intent = _assert_paid_once(stage, customer, event, card, row)
    assert intent["id"] == created[0]["id"]
    replays = [r for r in posts_with_key(stage.fake, "/v1/payment_intents",
                                         f"pw:{event}:payment_intent") if r["replayed"]]
    assert replays, "the resume did not repeat the PaymentIntent create with the same key"
    succeeded = [c for c in stage.fake.list_charges(customer)
                 if c.get("payment_intent") == intent["id"] and c["status"] == "succeeded"]
    assert [c["id"] for c in succeeded] == [intent["latest_charge"]]
    _world_agrees(stage, user_id)


def test_intent_needing_authentication_killed_before_it_was_recorded(stage: Stage,
                                                                     user) -> None:
    # Given a user whose card needs 3-D Secure, and Stripe refusing the off-session
    # PaymentIntent (402 authentication_required) but holding the answer
    user_id, customer, (card,) = user(THREE_D_SECURE)
    event = f"{user_id}-charge"
    fault = stage.fake.inject(method="POST", path="^/v1/payment_intents$", delay=HOLD,
                              when="after", times=1)
    _request_charge(stage, user_id, event)

    # When the worker is killed before it could record that the customer must act
    stage.wait_fired(fault)
    killed_at = stage.kill()
    assert_held_by_dead_worker(event_row(stage.engine, event), "intent_creating")
    assert len(intents_of_event(stage.fake, customer, event)) == 1

    # Then a fresh worker learns it from the replayed answer: the event waits for the
    # customer (action_required) with the one PaymentIntent in its result
    rows = wait_settled(stage.engine, [event], RECOVERY_TIMEOUT)
    row = rows.get(event) or {}
    took = time.monotonic() - killed_at
    assert row.get("status") == "action_required", row
    assert row["attempts"] >= 2 and row["redrives"] >= 1, row
    assert row["error_code"] == "authentication_required"
    intents = intents_of_event(stage.fake, customer, event)
    assert [i["id"] for i in intents] == [row["result"]["payment_intent_id"]]
    assert row["result"]["client_secret"].startswith(intents[0]["id"] + "_secret_")
    stored = pg_charge(stage.engine, event)
    assert stored["status"] == "requires_action"
    assert stored["payment_intent_id"] == intents[0]["id"]
    _world_agrees(stage, user_id)

    # And when the customer confirms on-session and authenticates, the watch (every
    # second) ends the event succeeded, once, with that PaymentIntent
    stage.fake.confirm_payment_intent_on_session(intents[0]["id"], card)
    stage.fake.authenticate_payment_intent(intents[0]["id"])
    poll(lambda: (event_row(stage.engine, event) or {}).get("status") == "succeeded", 30,
         "the watch to see the payment")
    row = event_row(stage.engine, event) or {}
    report(stage, "charge_requested/intent_creating/after-call/authentication", row, took,
           max(0, len(intents_of_event(stage.fake, customer, event)) - 1))
    _assert_paid_once(stage, customer, event, card, row)
    _world_agrees(stage, user_id)


# ---- refund_requested: refund_creating -------------------------------------------------------


def test_refund_killed_before_the_create_reaches_stripe(stage: Stage, user) -> None:
    # Given a succeeded PaymentIntent charge, and Stripe holding the next refund unrun
    user_id, _, _ = user(VISA)
    paid = _charged(stage, user_id)
    charge_id = pg_charge(stage.engine, paid)["stripe_charge_id"]
    event = f"{user_id}-refund"
    fault = stage.fake.inject(method="POST", path="^/v1/refunds$", status=503, delay=HOLD,
                              when="before", times=1)
    stage.publish("refund_requested", event_id=event, user_id=user_id, charge_event_id=paid,
                  amount=1000, reason="requested_by_customer")

    # When the worker is killed while it waits for Stripe
    stage.wait_fired(fault)
    killed_at = stage.kill()
    assert_held_by_dead_worker(event_row(stage.engine, event), "refund_creating")
    assert stage.fake.list_refunds(charge=charge_id) == []
    assert pg_refund(stage.engine, event)["status"] == "pending"

    # Then a fresh worker refunds once; the charge's amount_refunded agrees on both sides
    row, took = stage.recover(event, killed_at)
    refunds = refunds_of_event(stage.fake, charge_id, event)
    report(stage, "refund_requested/refund_creating/before-call", row, took,
           max(0, len(refunds) - 1))
    assert_resumed(row, "refund_creating")
    assert [(r["id"], r["amount"]) for r in refunds] == [(row["result"]["refund_id"], 1000)]
    assert pg_refund(stage.engine, event)["stripe_refund_id"] == refunds[0]["id"]
    assert pg_charge(stage.engine, paid)["amount_refunded"] == 1000
    _world_agrees(stage, user_id)


def test_refund_killed_after_stripe_refunded(stage: Stage, user) -> None:
    # Given a succeeded PaymentIntent charge, and Stripe refunding all of it but holding
    # the answer
    user_id, _, _ = user(VISA)
    paid = _charged(stage, user_id)
    charge_id = pg_charge(stage.engine, paid)["stripe_charge_id"]
    event = f"{user_id}-refund"
    fault = stage.fake.inject(method="POST", path="^/v1/refunds$", delay=HOLD, when="after",
                              times=1)
    stage.publish("refund_requested", event_id=event, user_id=user_id, charge_event_id=paid)

    # When the worker is killed before it could record the refund
    stage.wait_fired(fault)
    killed_at = stage.kill()
    assert_held_by_dead_worker(event_row(stage.engine, event), "refund_creating")
    created = refunds_of_event(stage.fake, charge_id, event)
    assert [r["amount"] for r in created] == [AMOUNT]
    assert pg_charge(stage.engine, paid)["amount_refunded"] == 0

    # Then a fresh worker replays the refund with the same key (not a second refund, which
    # Stripe would refuse: nothing is left) and records it
    row, took = stage.recover(event, killed_at)
    refunds = refunds_of_event(stage.fake, charge_id, event)
    report(stage, "refund_requested/refund_creating/after-call", row, took,
           max(0, len(refunds) - 1))
    assert_resumed(row, "refund_creating")
    assert [r["id"] for r in refunds] == [created[0]["id"]] == [row["result"]["refund_id"]]
    replays = [r for r in posts_with_key(stage.fake, "/v1/refunds", f"pw:{event}:refund")
               if r["replayed"]]
    assert replays, "the resume did not repeat the refund with the same key"
    stored = pg_refund(stage.engine, event)
    assert stored["status"] == "succeeded" and stored["amount"] == AMOUNT
    assert pg_charge(stage.engine, paid)["amount_refunded"] == AMOUNT
    _world_agrees(stage, user_id)
