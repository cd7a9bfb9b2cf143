"""user_registered, recovery point by recovery point: one Stripe customer per user, ever."""

from __future__ import annotations

from collections.abc import Callable

from core.errors import OutcomeUnknown
from db.ledger import now
from tasks.messages import UserRegistered
from tests.inprocess._support import (
    Deliveries,
    RecordingTelemetry,
    Rows,
    a_day_ago,
    assert_scheduled,
)
from tests.inprocess.fake_gateway import FakeGateway


def registration(ids: Callable[[str], str], event: str = "reg") -> UserRegistered:
    return UserRegistered(
        event_id=ids(event), user_id=ids("user"), email="ada@example.com", name="Ada Lovelace"
    )


def test_started_creates_the_customer_and_records_it(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    telemetry: RecordingTelemetry,
) -> None:
    # Given a new user
    msg = registration(ids)

    # When its user_registered is delivered
    outcome = deliveries.deliver(msg)

    # Then one customer is created under the event's key and recorded
    [create] = gateway.calls
    assert create.method == "create_customer"
    assert create.key == f"pw:{msg.event_id}:customer"
    assert create.params["metadata"] == {"event_id": msg.event_id, "user_id": msg.user_id}
    [customer_id] = gateway.customers
    assert outcome == {"event_id": msg.event_id, "status": "succeeded"}
    event = rows.event(msg.event_id)
    assert event["status"] == "succeeded"
    assert event["recovery_point"] == "customer_creating"
    assert event["result"] == {"customer_id": customer_id, "existing": False}
    assert set(event["progress"]) == {"write_started_at"}
    assert event["error_code"] is None and event["transient_failures"] == 0
    assert event["next_attempt_at"] is None and event["locked_by"] is None
    customer = rows.customer(msg.user_id)
    assert customer is not None
    assert customer["stripe_customer_id"] == customer_id
    assert customer["event_id"] == msg.event_id
    assert telemetry.finished == [("user_registered", "succeeded")]


def test_started_adopts_the_customer_the_user_already_has(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
) -> None:
    # Given a user registered by an earlier event
    msg = registration(ids, "reg-again")
    customer_id = customer(msg.user_id)

    # When a second user_registered of the same user is delivered
    deliveries.deliver(msg)

    # Then it succeeds with the existing customer and Stripe is not asked
    assert gateway.calls == []
    event = rows.event(msg.event_id)
    assert event["status"] == "succeeded"
    assert event["recovery_point"] == "started"
    assert event["result"] == {"customer_id": customer_id, "existing": True}
    assert event["progress"] == {}


def test_started_waits_while_another_event_is_creating_the_customer(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
) -> None:
    # Given a first user_registered whose create is in flight (at customer_creating)
    first = registration(ids, "reg-first")
    deliveries.claim_at(first, "customer_creating", {})
    second = UserRegistered(event_id=ids("reg-second"), user_id=first.user_id, email=first.email)

    # When a second user_registered of the same user is delivered
    before = now()
    outcome = deliveries.deliver(second)

    # Then it waits for the first (no budget spent) instead of creating a second customer
    assert outcome["status"] == "retry_scheduled"
    assert gateway.calls == []
    event = rows.event(second.event_id)
    assert event["status"] == "processing"
    assert event["recovery_point"] == "started"
    assert event["transient_failures"] == 0
    assert event["last_error"].startswith("customer_not_found: event ")
    assert_scheduled(event, before, 0.5, 1.0)  # backoff of its first attempt
    assert rows.customer(first.user_id) is None


def test_customer_creating_resumes_after_a_lost_response_with_the_same_key(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
) -> None:
    # Given a create that reached Stripe but whose response was lost
    msg = registration(ids)
    gateway.fail_next("create_customer", OutcomeUnknown("no answer"), after_effect=True)
    first = deliveries.deliver(msg)
    assert first["status"] == "retry_scheduled"
    waiting = rows.event(msg.event_id)
    assert (waiting["status"], waiting["recovery_point"]) == ("processing", "customer_creating")
    assert waiting["transient_failures"] == 1
    assert waiting["last_error"] == "stripe_outcome_unknown: no answer"
    assert rows.customer(msg.user_id) is None

    # When the event is delivered again
    deliveries.deliver(msg)

    # Then the create is repeated with the same key and Stripe answers the same customer
    creates = gateway.calls_to("create_customer")
    assert [c.key for c in creates] == [f"pw:{msg.event_id}:customer"] * 2
    [customer_id] = gateway.customers
    event = rows.event(msg.event_id)
    assert event["status"] == "succeeded"
    assert event["result"] == {"customer_id": customer_id, "existing": False}
    assert event["transient_failures"] == 1 and event["next_attempt_at"] is None
    customer = rows.customer(msg.user_id)
    assert customer is not None and customer["stripe_customer_id"] == customer_id


def test_customer_creating_after_the_key_expired_finds_the_customer_by_metadata(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
) -> None:
    # Given a create that reached Stripe, its response lost, and a day gone by: Stripe
    # has forgotten the key
    msg = registration(ids)
    gateway.fail_next("create_customer", OutcomeUnknown("no answer"), after_effect=True)
    deliveries.deliver(msg)
    rows.age_pending_write(msg.event_id, hours=25)
    gateway.forget_idempotency_keys()

    # When the event is delivered again
    deliveries.deliver(msg)

    # Then the customer is found by the event's metadata, not created a second time
    assert gateway.methods_called() == ["create_customer", "find_customer"]
    [find] = gateway.calls_to("find_customer")
    # (of generation 0: a new generation's customer would carry its number)
    assert find.params == {"email": msg.email, "event_id": msg.event_id, "generation": 0}
    [customer_id] = gateway.customers
    event = rows.event(msg.event_id)
    assert event["status"] == "succeeded"
    assert event["result"] == {"customer_id": customer_id, "existing": False}
    customer = rows.customer(msg.user_id)
    assert customer is not None and customer["stripe_customer_id"] == customer_id


def test_customer_creating_after_the_key_expired_creates_when_nothing_was_made(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
) -> None:
    # Given an event left at customer_creating a day ago whose create never reached Stripe
    msg = registration(ids)
    claim = deliveries.claim_at(msg, "customer_creating", {"write_started_at": a_day_ago()})

    # When it runs
    deliveries.run(msg, claim)

    # Then nothing is found by metadata, and the customer is created under the event's key
    assert gateway.methods_called() == ["find_customer", "create_customer"]
    assert gateway.calls_to("create_customer")[0].key == f"pw:{msg.event_id}:customer"
    [customer_id] = gateway.customers
    assert rows.event(msg.event_id)["status"] == "succeeded"
    customer = rows.customer(msg.user_id)
    assert customer is not None and customer["stripe_customer_id"] == customer_id
