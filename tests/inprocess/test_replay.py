"""An operator's replay (tasks/replay.py) and the re-drive that follows it: a dead event
resumes where it stopped with the same keys; a failed one only with --force, as a new
generation with new keys."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import Engine

from core.errors import OutcomeUnknown
from core.settings import Settings
from db.ledger import now
from tasks.messages import CardTokenReceived, ChargeRequested, Message, UserRegistered
from tasks.replay import Refused, Replayed, ReplayOutcome, replay
from tasks.sweeper import Redrive
from tests.inprocess._support import MAX_ATTEMPTS, Deliveries, Rows
from tests.inprocess.fake_gateway import DECLINED_AT_CHARGE, VISA, FakeGateway


def charge_requested(ids: Callable[[str], str]) -> ChargeRequested:
    return ChargeRequested(event_id=ids("charge"), user_id=ids("user"), amount=2000, currency="usd")


def bury(deliveries: Deliveries, gateway: FakeGateway, msg: Message, method: str) -> None:
    """Deliver `msg` as often as the budget allows, `method` failing before Stripe each time."""
    for _ in range(MAX_ATTEMPTS):
        gateway.fail_next(method, OutcomeUnknown("Stripe answered 503"))
        deliveries.deliver(msg)


def operator_replay(
    engine: Engine, settings: Settings, event_id: str, *, force: bool
) -> tuple[ReplayOutcome, list[Redrive]]:
    """`payworker replay [--force] <event_id>` without Celery: returns what it published."""
    published: list[Redrive] = []
    with engine.begin() as conn:
        outcome = replay(
            conn, event_id, force=force, queue=settings.queue, publish=published.append,
            grace_seconds=settings.redrive_after_seconds,
        )  # fmt: skip
    return outcome, published


def test_a_dead_charge_resumes_at_its_point_with_the_same_key(
    ids: Callable[[str], str], deliveries: Deliveries, gateway: FakeGateway, rows: Rows,
    customer: Callable[[str], str], card: Callable[..., str], engine: Engine, settings: Settings,
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
    ids: Callable[[str], str], deliveries: Deliveries, gateway: FakeGateway, rows: Rows,
    customer: Callable[[str], str], engine: Engine, settings: Settings,
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
    ids: Callable[[str], str], deliveries: Deliveries, rows: Rows,
    customer: Callable[[str], str], card: Callable[..., str], engine: Engine, settings: Settings,
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
    ids: Callable[[str], str], deliveries: Deliveries, gateway: FakeGateway, rows: Rows,
    customer: Callable[[str], str], card: Callable[..., str], engine: Engine, settings: Settings,
) -> None:
    # Given a declined charge, and the card holder who has since sorted it out
    customer_id = customer(ids("user"))
    card_id = card(ids("user"), customer_id, DECLINED_AT_CHARGE)
    msg = charge_requested(ids)
    deliveries.deliver(msg)
    [declined] = gateway.charges
    gateway.stop_declining(card_id)

    # When an operator replays it with --force
    outcome, published = operator_replay(engine, settings, msg.event_id, force=True)

    # Then it is a new generation starting at charge_creating, its charges row pending
    # again and the declined outcome kept in its history
    assert outcome == Replayed(
        event_id=msg.event_id, was="failed", generation=1, recovery_point="charge_creating",
        new_generation=True, published=True, queue=settings.queue,
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
    pending = rows.charge(msg.event_id)
    assert pending is not None
    assert (pending["status"], pending["stripe_charge_id"]) == ("pending", None)
    assert (pending["failure_code"], pending["decline_code"]) == (None, None)

    # When the re-drive runs
    deliveries.redrive(msg.event_id)

    # Then the charge is made again under the new generation's key, and recorded
    creates = gateway.calls_to("create_charge")
    assert [c.key for c in creates] == [
        f"pw:{msg.event_id}:charge", f"pw:{msg.event_id}:g1:charge",
    ]  # fmt: skip
    [charged] = [c for c in gateway.charges if c != declined]
    event = rows.event(msg.event_id)
    assert (event["status"], event["generation"]) == ("succeeded", 1)
    assert event["result"]["charge_id"] == charged
    charge = rows.charge(msg.event_id)
    assert charge is not None
    assert (charge["status"], charge["stripe_charge_id"]) == ("succeeded", charged)


def test_a_registration_waits_for_a_dead_creator_until_its_replay_creates_the_customer(
    ids: Callable[[str], str], deliveries: Deliveries, gateway: FakeGateway, rows: Rows,
    engine: Engine, settings: Settings,
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
