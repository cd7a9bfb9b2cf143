"""charge_requested, recovery point by recovery point: a pending charges row before the
charge may reach Stripe, exactly one Stripe charge per event, the outcome on both rows."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from core.errors import OutcomeUnknown
from core.settings import Settings
from tasks.messages import ChargeRequested
from tests.inprocess._support import Deliveries, RecordingTelemetry, Rows
from tests.inprocess.fake_gateway import DECLINED_AT_CHARGE, VISA, FakeGateway


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """These tests pin the Charges API (PAYWORKER_CHARGE_API=charges): the PaymentIntents
    path has its own (test_payment_intents.py)."""
    return settings.model_copy(update={"charge_api": "charges"})


def charge_requested(
    ids: Callable[[str], str], amount: int = 2000, card_id: str | None = None
) -> ChargeRequested:
    return ChargeRequested(
        event_id=ids("charge"), user_id=ids("user"), amount=amount, currency="usd",
        card_id=card_id, description="order 42", metadata={"order": "42"},
    )  # fmt: skip


def test_started_records_a_pending_charge_then_charges_once(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
    card: Callable[..., str],
    telemetry: RecordingTelemetry,
) -> None:
    # Given a user with a default Visa
    customer_id = customer(ids("user"))
    visa = card(ids("user"), customer_id, VISA)
    msg = charge_requested(ids)

    # When charge_requested (no card named: the default) is delivered
    outcome = deliveries.deliver(msg)

    # Then exactly one charge is created, under the event's key, and recorded
    [create] = gateway.calls
    assert (create.method, create.key) == ("create_charge", f"pw:{msg.event_id}:charge")
    assert create.params == {
        "customer_id": customer_id, "card_id": visa, "amount": 2000, "currency": "usd",
        "description": "order 42",
        "metadata": {"order": "42", "event_id": msg.event_id, "user_id": msg.user_id},
    }  # fmt: skip
    [charge_id] = gateway.charges
    assert outcome == {"event_id": msg.event_id, "status": "succeeded"}
    event = rows.event(msg.event_id)
    assert event["status"] == "succeeded"
    assert event["recovery_point"] == "charge_creating"
    assert event["progress"]["customer_id"] == customer_id
    assert event["progress"]["card_id"] == visa
    assert event["progress"]["write_started_at"] is not None
    assert event["result"] == {
        "charge_id": charge_id, "amount": 2000, "currency": "usd", "card_id": visa,
        "status": "succeeded",
    }  # fmt: skip
    assert event["error_code"] is None and event["transient_failures"] == 0
    charge = rows.charge(msg.event_id)
    assert charge is not None
    assert (charge["status"], charge["stripe_charge_id"]) == ("succeeded", charge_id)
    assert (charge["amount"], charge["currency"], charge["stripe_card_id"]) == (2000, "usd", visa)
    assert telemetry.finished == [("charge_requested", "succeeded")]


def test_started_fails_an_amount_below_the_minimum_before_stripe(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
    card: Callable[..., str],
    telemetry: RecordingTelemetry,
) -> None:
    # Given a user with a default card
    card(ids("user"), customer(ids("user")))
    msg = charge_requested(ids, amount=49)

    # When a charge below USD 0.50 is requested
    outcome = deliveries.deliver(msg)

    # Then the event fails for good (FAIL) without a Stripe call or a charges row
    assert outcome["status"] == "failed" and outcome["error_code"] == "amount_too_small"
    assert gateway.calls == []
    event = rows.event(msg.event_id)
    assert (event["status"], event["recovery_point"]) == ("failed", "started")
    assert event["error_code"] == "amount_too_small"
    assert event["error_message"] == "amount 49 is below the USD minimum of 50"
    assert event["result"] == {
        "decline_code": None, "failure_code": "amount_too_small", "charge_id": None,
    }  # fmt: skip
    assert event["transient_failures"] == 0 and event["next_attempt_at"] is None
    assert rows.charge(msg.event_id) is None
    assert telemetry.finished == [("charge_requested", "failed")]
    assert telemetry.retries == []


def test_charge_creating_resumes_after_a_lost_response_with_the_same_key(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
    card: Callable[..., str],
) -> None:
    # Given a charge that reached Stripe but whose response was lost
    card(ids("user"), customer(ids("user")))
    msg = charge_requested(ids)
    gateway.fail_next("create_charge", OutcomeUnknown("no answer"), after_effect=True)
    deliveries.deliver(msg)
    waiting = rows.event(msg.event_id)
    assert (waiting["status"], waiting["recovery_point"]) == ("processing", "charge_creating")
    assert waiting["transient_failures"] == 1
    pending = rows.charge(msg.event_id)
    assert pending is not None
    assert (pending["status"], pending["stripe_charge_id"]) == ("pending", None)

    # When the event is delivered again
    deliveries.deliver(msg)

    # Then the create is repeated under the same key, and Stripe answers the same charge
    creates = gateway.calls_to("create_charge")
    assert [c.key for c in creates] == [f"pw:{msg.event_id}:charge"] * 2
    [charge_id] = gateway.charges
    event = rows.event(msg.event_id)
    assert event["status"] == "succeeded" and event["result"]["charge_id"] == charge_id
    charge = rows.charge(msg.event_id)
    assert charge is not None
    assert (charge["status"], charge["stripe_charge_id"]) == ("succeeded", charge_id)


def test_charge_creating_declined_fails_the_event_and_its_charge(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
    card: Callable[..., str],
    telemetry: RecordingTelemetry,
) -> None:
    # Given a user whose default card has insufficient funds
    card(ids("user"), customer(ids("user")), DECLINED_AT_CHARGE)
    msg = charge_requested(ids)

    # When a charge is requested
    outcome = deliveries.deliver(msg)

    # Then Stripe declines it once; the event and its charges row fail with the decline
    assert outcome["status"] == "failed" and outcome["error_code"] == "card_declined"
    [create] = gateway.calls
    assert create.key == f"pw:{msg.event_id}:charge"
    [declined] = gateway.charges.values()
    assert declined.status == "failed"
    event = rows.event(msg.event_id)
    assert (event["status"], event["recovery_point"]) == ("failed", "charge_creating")
    assert event["error_code"] == "card_declined"
    assert event["result"] == {
        "decline_code": "insufficient_funds", "failure_code": "card_declined",
        "charge_id": declined.id,
    }  # fmt: skip
    assert event["transient_failures"] == 0 and event["next_attempt_at"] is None
    charge = rows.charge(msg.event_id)
    assert charge is not None
    assert charge["status"] == "failed"
    assert charge["stripe_charge_id"] == declined.id
    assert (charge["failure_code"], charge["decline_code"]) == (
        "card_declined", "insufficient_funds",
    )  # fmt: skip
    assert telemetry.finished == [("charge_requested", "failed")]


def test_charge_creating_after_the_key_expired_finds_the_charge_by_metadata(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
    card: Callable[..., str],
) -> None:
    # Given a charge that reached Stripe, its response lost, and a day gone by: Stripe has
    # forgotten the key
    card(ids("user"), customer(ids("user")))
    msg = charge_requested(ids)
    gateway.fail_next("create_charge", OutcomeUnknown("no answer"), after_effect=True)
    deliveries.deliver(msg)
    rows.age_pending_write(msg.event_id, hours=25)
    gateway.forget_idempotency_keys()

    # When the event is delivered again
    deliveries.deliver(msg)

    # Then the charge is found by the event's metadata instead of being made twice
    assert gateway.methods_called() == ["create_charge", "find_charge"]
    [charge_id] = gateway.charges
    event = rows.event(msg.event_id)
    assert event["status"] == "succeeded" and event["result"]["charge_id"] == charge_id
    charge = rows.charge(msg.event_id)
    assert charge is not None
    assert (charge["status"], charge["stripe_charge_id"]) == ("succeeded", charge_id)


def test_charge_creating_after_the_key_expired_fails_with_the_declined_charge_found(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
    card: Callable[..., str],
) -> None:
    # Given a declined charge whose answer was lost, a day ago
    card(ids("user"), customer(ids("user")), DECLINED_AT_CHARGE)
    msg = charge_requested(ids)
    gateway.fail_next("create_charge", OutcomeUnknown("no answer"), after_effect=True)
    deliveries.deliver(msg)
    rows.age_pending_write(msg.event_id, hours=25)
    gateway.forget_idempotency_keys()

    # When the event is delivered again
    deliveries.deliver(msg)

    # Then the failed charge found by metadata fails the event and its row, with its codes
    assert gateway.methods_called() == ["create_charge", "find_charge"]
    [declined] = gateway.charges.values()
    event = rows.event(msg.event_id)
    assert (event["status"], event["error_code"]) == ("failed", "card_declined")
    assert event["result"]["charge_id"] == declined.id
    assert event["result"]["decline_code"] == "insufficient_funds"
    assert event["result"]["status"] == "failed"
    charge = rows.charge(msg.event_id)
    assert charge is not None
    assert (charge["status"], charge["stripe_charge_id"]) == ("failed", declined.id)
    assert (charge["failure_code"], charge["decline_code"]) == (
        "card_declined", "insufficient_funds",
    )  # fmt: skip


def test_charge_creating_after_the_key_expired_charges_when_nothing_was_made(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
    card: Callable[..., str],
) -> None:
    # Given a charge that never reached Stripe (no answer before it was sent), a day ago
    card(ids("user"), customer(ids("user")))
    msg = charge_requested(ids)
    gateway.fail_next("create_charge", OutcomeUnknown("connection refused"))
    deliveries.deliver(msg)
    rows.age_pending_write(msg.event_id, hours=25)
    gateway.forget_idempotency_keys()

    # When the event is delivered again
    deliveries.deliver(msg)

    # Then nothing is found by metadata, and the charge is created under the event's key
    assert gateway.methods_called() == ["create_charge", "find_charge", "create_charge"]
    assert gateway.calls[-1].key == f"pw:{msg.event_id}:charge"
    [charge_id] = gateway.charges
    assert rows.event(msg.event_id)["status"] == "succeeded"
    charge = rows.charge(msg.event_id)
    assert charge is not None
    assert (charge["status"], charge["stripe_charge_id"]) == ("succeeded", charge_id)
