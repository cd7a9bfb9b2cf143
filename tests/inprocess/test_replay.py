"""An operator's replay (tasks/replay.py) and the re-drive that follows it: a dead event
resumes where it stopped with the same keys; a failed one only with --force, as a new
generation with new keys."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import cast

import pytest
from sqlalchemy import Engine, text

from core.errors import OutcomeUnknown
from core.settings import Settings
from db.ledger import now
from tasks.gateway import StripeGateway
from tasks.messages import CardTokenReceived, ChargeRequested, Message, UserRegistered
from tasks.replay import Checked, Refused, Replayed, ReplayOutcome, ask_stripe, replay
from tasks.sweeper import Redrive
from tests.inprocess._support import MAX_ATTEMPTS, Deliveries, Rows
from tests.inprocess.fake_gateway import DECLINED_AT_CHARGE, VISA, FakeGateway


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """These tests pin the Charges API (PAYWORKER_CHARGE_API=charges): the PaymentIntents
    path has its own (test_payment_intents.py)."""
    return settings.model_copy(update={"charge_api": "charges"})


def charge_requested(ids: Callable[[str], str]) -> ChargeRequested:
    return ChargeRequested(event_id=ids("charge"), user_id=ids("user"), amount=2000, currency="usd")


def bury(deliveries: Deliveries, gateway: FakeGateway, msg: Message, method: str) -> None:
    """Deliver `msg` as often as the budget allows, `method` failing before Stripe each time."""
    for _ in range(MAX_ATTEMPTS):
        gateway.fail_next(method, OutcomeUnknown("Stripe answered 503"))
        deliveries.deliver(msg)


def operator_replay(
    engine: Engine,
    settings: Settings,
    event_id: str,
    *,
    force: bool,
    gateway: FakeGateway | None = None,
    operator: str = "ops-test",
    reason: str | None = None,
) -> tuple[ReplayOutcome, list[Redrive]]:
    """`payworker replay [--force --reason R] [--operator O] <event_id>` without Celery:
    Stripe (`gateway`) asked first when forced, as the command does; returns what it
    published."""
    published: list[Redrive] = []
    stripe = cast(StripeGateway, gateway or FakeGateway())  # the same methods (test_fake_gateway)
    checked = ask_stripe(engine, lambda: stripe, event_id) if force else None
    with engine.begin() as conn:
        outcome = replay(
            conn, event_id, force=force, queue=settings.queue, publish=published.append,
            grace_seconds=settings.redrive_after_seconds, operator=operator,
            reason=reason if reason is not None or not force else "a test forces it",
            checked=checked,
        )  # fmt: skip
    return outcome, published


def test_a_dead_charge_resumes_at_its_point_with_the_same_key(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
    card: Callable[..., str],
    engine: Engine,
    settings: Settings,
) -> None:
    # Given a charge buried at charge_creating after its retry budget
    card(ids("user"), customer(ids("user")))
    msg = charge_requested(ids)
    bury(deliveries, gateway, msg, "create_charge")
    dead = rows.event(msg.event_id)
    assert (dead["status"], dead["recovery_point"]) == ("dead", "charge_creating")

    # When an operator replays it
    before = now()
    outcome, published = operator_replay(engine, settings, msg.event_id, force=False)

    # Then it is open again at the same point and generation, with a fresh budget, its
    # re-drive published and the dead outcome kept in its history
    assert outcome == Replayed(
        event_id=msg.event_id, was="dead", generation=0, recovery_point="charge_creating",
        new_generation=False, published=True, queue=settings.queue,
        keys=f"pw:{msg.event_id}:{{step}}",
    )  # fmt: skip
    # as the event's own task, naming the event only
    assert published == [Redrive(msg.event_id, "charge_requested", msg.user_id)]
    assert published[0].task_name == "payments.charge_requested"
    assert published[0].kwargs == {"event_id": msg.event_id, "user_id": msg.user_id}
    event = rows.event(msg.event_id)
    assert (event["status"], event["recovery_point"]) == ("processing", "charge_creating")
    assert (event["generation"], event["transient_failures"]) == (0, 0)
    assert event["error_code"] is None and event["completed_at"] is None
    assert event["next_attempt_at"] >= before + timedelta(seconds=settings.redrive_after_seconds)
    assert event["progress"]["customer_id"] == dead["progress"]["customer_id"]
    [history] = event["progress"]["replays"]
    assert (history["status"], history["error_code"]) == ("dead", "retries_exhausted")
    assert (history["generation"], history["new_generation"]) == (0, False)

    # When the re-drive runs
    deliveries.redrive(msg.event_id)

    # Then the charge is made under the key of every earlier attempt
    creates = gateway.calls_to("create_charge")
    assert len(creates) == MAX_ATTEMPTS + 1
    assert {c.key for c in creates} == {f"pw:{msg.event_id}:charge"}
    [charge_id] = gateway.charges
    event = rows.event(msg.event_id)
    assert event["status"] == "succeeded" and event["result"]["charge_id"] == charge_id
    assert event["progress"]["replays"] == [history]
    charge = rows.charge(msg.event_id)
    assert charge is not None
    assert (charge["status"], charge["stripe_charge_id"]) == ("succeeded", charge_id)


def test_a_dead_card_event_resumes_the_attach_with_its_sealed_token(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
    engine: Engine,
    settings: Settings,
) -> None:
    # Given a card_token_received buried at card_attaching, its token sealed in the ledger
    customer_id = customer(ids("user"))
    msg = CardTokenReceived(
        event_id=ids("card"), user_id=ids("user"), token=gateway.add_token(VISA)
    )
    bury(deliveries, gateway, msg, "attach_card")
    assert rows.event(msg.event_id)["sealed_token"] is not None

    # When an operator replays it and the re-drive runs (the message rebuilt from the ledger)
    outcome, _ = operator_replay(engine, settings, msg.event_id, force=False)
    assert isinstance(outcome, Replayed) and outcome.recovery_point == "card_attaching"
    deliveries.redrive(msg.event_id)

    # Then the unsealed token is attached under the same key, and then erased
    attaches = gateway.calls_to("attach_card")
    assert {(c.key, c.params["token"]) for c in attaches} == {
        (f"pw:{msg.event_id}:attach", msg.token)
    }
    [card_id] = gateway.customers[customer_id].cards
    event = rows.event(msg.event_id)
    assert event["status"] == "succeeded" and event["result"]["card_id"] == card_id
    assert event["sealed_token"] is None
    assert [c["stripe_card_id"] for c in rows.cards(msg.user_id)] == [card_id]


def test_a_failed_charge_is_not_replayed_without_force(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    rows: Rows,
    customer: Callable[[str], str],
    card: Callable[..., str],
    engine: Engine,
    settings: Settings,
) -> None:
    # Given a declined charge
    card(ids("user"), customer(ids("user")), DECLINED_AT_CHARGE)
    msg = charge_requested(ids)
    deliveries.deliver(msg)
    failed = rows.event(msg.event_id)

    # When an operator replays it without --force
    outcome, published = operator_replay(engine, settings, msg.event_id, force=False)

    # Then it is refused: nothing published, nothing changed
    assert isinstance(outcome, Refused)
    assert outcome.reason.startswith("failed (card_declined): a final business outcome")
    assert published == []
    assert rows.event(msg.event_id) == failed


def test_a_forced_replay_of_a_failed_charge_is_a_new_generation_at_charge_creating(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
    card: Callable[..., str],
    engine: Engine,
    settings: Settings,
) -> None:
    # Given a declined charge, and the card holder who has since sorted it out
    customer_id = customer(ids("user"))
    card_id = card(ids("user"), customer_id, DECLINED_AT_CHARGE)
    msg = charge_requested(ids)
    deliveries.deliver(msg)
    [declined] = gateway.charges
    gateway.stop_declining(card_id)

    # When an operator replays it with --force
    outcome, published = operator_replay(
        engine, settings, msg.event_id, force=True, gateway=gateway, operator="ada",
        reason="customer topped up the card",
    )  # fmt: skip

    # Then Stripe was asked for a succeeded charge of the event first (there is none)
    [asked] = gateway.calls_to("find_charge")
    assert asked.params == {
        "customer_id": customer_id, "event_id": msg.event_id, "generation": None,
        "succeeded": True,
    }  # fmt: skip
    # and it is a new generation starting at charge_creating, its charges row pending
    # again and the declined outcome kept in its history, with who replayed it and why
    assert outcome == Replayed(
        event_id=msg.event_id, was="failed", generation=1, recovery_point="charge_creating",
        new_generation=True, published=True, queue=settings.queue,
        keys=f"pwg:1:{msg.event_id}:{{step}}",
    )  # fmt: skip
    assert published == [Redrive(msg.event_id, "charge_requested", msg.user_id)]
    event = rows.event(msg.event_id)
    assert (event["status"], event["recovery_point"]) == ("processing", "charge_creating")
    assert (event["generation"], event["transient_failures"]) == (1, 0)
    assert event["error_code"] is None and event["result"] is None
    assert event["progress"]["customer_id"] == customer_id
    assert event["progress"]["card_id"] == card_id
    assert event["progress"]["write_started_at"] is not None
    [history] = event["progress"]["replays"]
    assert (history["status"], history["error_code"], history["generation"]) == (
        "failed", "card_declined", 0,
    )  # fmt: skip
    assert history["charge"]["stripe_charge_id"] == declined
    assert history["charge"]["decline_code"] == "insufficient_funds"
    assert (history["operator"], history["reason"]) == ("ada", "customer topped up the card")
    pending = rows.charge(msg.event_id)
    assert pending is not None
    assert (pending["status"], pending["stripe_charge_id"]) == ("pending", None)
    assert (pending["failure_code"], pending["decline_code"]) == (None, None)

    # When the re-drive runs
    deliveries.redrive(msg.event_id)

    # Then the charge is made again under the new generation's key, its number in the
    # charge's metadata, and recorded
    creates = gateway.calls_to("create_charge")
    assert [c.key for c in creates] == [
        f"pw:{msg.event_id}:charge", f"pwg:1:{msg.event_id}:charge",
    ]  # fmt: skip
    assert "generation" not in creates[0].params["metadata"]
    assert creates[1].params["metadata"] == {
        "event_id": msg.event_id, "user_id": msg.user_id, "generation": "1",
    }  # fmt: skip
    [charged] = [c for c in gateway.charges if c != declined]
    event = rows.event(msg.event_id)
    assert (event["status"], event["generation"]) == ("succeeded", 1)
    assert event["result"]["charge_id"] == charged
    charge = rows.charge(msg.event_id)
    assert charge is not None
    assert (charge["status"], charge["stripe_charge_id"]) == ("succeeded", charged)


def test_a_registration_waits_for_a_dead_creator_until_its_replay_creates_the_customer(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    engine: Engine,
    settings: Settings,
) -> None:
    # Given a user_registered buried at customer_creating (whether its create reached
    # Stripe is unknown), and a second user_registered of the same user
    first = UserRegistered(event_id=ids("reg-first"), user_id=ids("user"), email="a@example.com")
    bury(deliveries, gateway, first, "create_customer")
    second = UserRegistered(event_id=ids("reg-second"), user_id=first.user_id, email=first.email)

    # When the second is delivered
    waiting = deliveries.deliver(second)

    # Then it creates nothing: it waits for the dead creator, whose replay alone can tell
    assert waiting["status"] == "retry_scheduled", waiting
    assert gateway.customers == {}
    assert "died creating" in rows.event(second.event_id)["last_error"]

    # When an operator replays the first and its re-drive runs, then the second again
    operator_replay(engine, settings, first.event_id, force=False)
    created = deliveries.redrive(first.event_id)
    adopted = deliveries.redrive(second.event_id)

    # Then one Stripe customer exists, made under the first event's key, and the second
    # event adopts it
    [customer_id] = gateway.customers
    assert created["status"] == "succeeded", created
    assert rows.event(first.event_id)["result"] == {"customer_id": customer_id, "existing": False}
    assert adopted["status"] == "succeeded", adopted
    assert rows.event(second.event_id)["result"] == {"customer_id": customer_id, "existing": True}


def declined_charge(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    customer: Callable[[str], str],
    card: Callable[..., str],
) -> tuple[ChargeRequested, str, str]:
    """A charge Stripe declined (failed in the ledger), its card no longer declining;
    returns the message, the customer and the card."""
    msg = charge_requested(ids)
    customer_id = customer(msg.user_id)
    card_id = card(msg.user_id, customer_id, DECLINED_AT_CHARGE)
    deliveries.deliver(msg)
    gateway.stop_declining(card_id)
    return msg, customer_id, card_id


def test_a_forced_replay_is_refused_when_stripe_holds_a_succeeded_charge_of_the_event(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
    card: Callable[..., str],
    engine: Engine,
    settings: Settings,
) -> None:
    # Given a declined charge, failed in the ledger, while Stripe holds a succeeded charge
    # made under the event's metadata (an outcome the ledger lost)
    msg, customer_id, card_id = declined_charge(ids, deliveries, gateway, customer, card)
    paid = gateway.create_charge(
        "pw:elsewhere", customer_id=customer_id, card_id=card_id, amount=msg.amount,
        currency=msg.currency, description=None, metadata=msg.stripe_metadata(),
    )  # fmt: skip
    failed, charge_row = rows.event(msg.event_id), rows.charge(msg.event_id)

    # When an operator forces a new generation
    outcome, published = operator_replay(
        engine, settings, msg.event_id, force=True, gateway=gateway
    )

    # Then it is refused, naming the charge, and nothing changed or was published
    assert isinstance(outcome, Refused), outcome
    assert f"succeeded charge of this event, {paid.charge_id}" in outcome.reason
    assert published == []
    assert rows.event(msg.event_id) == failed and rows.charge(msg.event_id) == charge_row
    assert len(gateway.calls_to("create_charge")) == 2  # the declined one and ours above


def test_a_forced_replay_needs_stripe_asked_about_the_current_generation(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
    card: Callable[..., str],
    engine: Engine,
    settings: Settings,
) -> None:
    # Given a declined charge
    msg, _, _ = declined_charge(ids, deliveries, gateway, customer, card)
    failed = rows.event(msg.event_id)

    # When a caller forces it without asking Stripe, or with an answer about another
    # generation
    for checked in (None, Checked(msg.event_id, generation=7)):
        with engine.begin() as conn:
            outcome = replay(
                conn, msg.event_id, force=True, queue=settings.queue, publish=lambda _: None,
                grace_seconds=1, operator="ops", reason="test", checked=checked,
            )  # fmt: skip
        # Then it is refused and nothing changes
        assert isinstance(outcome, Refused), outcome
        assert outcome.reason.startswith("Stripe was not asked")
    assert rows.event(msg.event_id) == failed


def test_a_new_generation_resumed_after_the_key_window_finds_only_its_own_charge(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
    card: Callable[..., str],
    engine: Engine,
    settings: Settings,
) -> None:
    # Given a forced new generation of a declined charge, whose first create's outcome is
    # unknown, resumed more than a day later (Stripe forgot the key)
    msg, customer_id, _ = declined_charge(ids, deliveries, gateway, customer, card)
    [declined] = gateway.charges
    operator_replay(engine, settings, msg.event_id, force=True, gateway=gateway)
    gateway.fail_next("create_charge", OutcomeUnknown("no answer from Stripe"))
    assert deliveries.redrive(msg.event_id)["status"] == "retry_scheduled"
    rows.age_pending_write(msg.event_id, hours=25)

    # When it resumes
    deliveries.redrive(msg.event_id)

    # Then it looked up generation 1's charge only: the declined charge of generation 0
    # (same event_id) is not adopted, and the charge is made under generation 1's key
    lookup = gateway.calls_to("find_charge")[-1]
    assert (lookup.params["event_id"], lookup.params["generation"]) == (msg.event_id, 1)
    event = rows.event(msg.event_id)
    assert event["status"] == "succeeded", event
    assert event["result"]["charge_id"] != declined
    assert gateway.calls_to("create_charge")[-1].key == f"pwg:1:{msg.event_id}:charge"
    assert [c for c in gateway.charges if c != declined] == [event["result"]["charge_id"]]
    assert gateway.charges[event["result"]["charge_id"]].customer_id == customer_id


def test_a_generation_started_before_the_pwg_form_keeps_its_keys_and_metadata(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
    card: Callable[..., str],
    engine: Engine,
    settings: Settings,
) -> None:
    # Given generation 1 of a declined charge started by an earlier release: no key form
    # in its progress, and its first create sent under the old key with an unknown outcome
    msg, _, _ = declined_charge(ids, deliveries, gateway, customer, card)
    operator_replay(engine, settings, msg.event_id, force=True, gateway=gateway)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE payment_events SET progress = progress - 'key_form' WHERE event_id = :e"),
            {"e": msg.event_id},
        )
    gateway.fail_next("create_charge", OutcomeUnknown("no answer"), after_effect=True)
    assert deliveries.redrive(msg.event_id)["status"] == "retry_scheduled"

    # When it resumes after the upgrade
    deliveries.redrive(msg.event_id)

    # Then every create of generation 1 sent the old key and the old metadata, so Stripe
    # answered the resumed one with the charge it had made: one charge, not two
    creates = gateway.calls_to("create_charge")[1:]
    assert {c.key for c in creates} == {f"pw:{msg.event_id}:g1:charge"}
    assert all("generation" not in c.params["metadata"] for c in creates)
    event = rows.event(msg.event_id)
    assert event["status"] == "succeeded", event
    assert len(gateway.charges) == 2  # the declined one and generation 1's
