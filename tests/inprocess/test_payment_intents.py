"""charge_requested through PaymentIntents (PAYWORKER_CHARGE_API=payment_intents, the
default), recovery point by recovery point: one PaymentIntent per event, the customer's
3-D Secure watched, an abandoned one canceled, the outcome on both rows exactly once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest
from sqlalchemy import Engine

from core.errors import OutcomeUnknown
from core.settings import Settings
from tasks.messages import ChargeRequested
from tasks.replay import Refused, Replayed
from tests.inprocess._support import MAX_ATTEMPTS, Deliveries, RecordingTelemetry, Rows
from tests.inprocess.fake_gateway import DECLINED_AT_CHARGE, VISA, FakeGateway
from tests.inprocess.test_replay import operator_replay

EXPIRY_HOURS = 23.0


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"charge_api": "payment_intents", "action_expiry_hours": EXPIRY_HOURS}
    )


def charge_requested(ids: Callable[[str], str], amount: int = 2000) -> ChargeRequested:
    return ChargeRequested(
        event_id=ids("charge"), user_id=ids("user"), amount=amount, currency="usd",
        description="order 42", metadata={"order": "42"},
    )  # fmt: skip


def test_a_charge_is_one_payment_intent_confirmed_off_session(
    ids: Callable[[str], str], deliveries: Deliveries, gateway: FakeGateway, rows: Rows,
    customer: Callable[[str], str], card: Callable[..., str], telemetry: RecordingTelemetry,
) -> None:
    # Given a user with a default (legacy card_) card
    customer_id = customer(ids("user"))
    visa = card(ids("user"), customer_id, VISA)
    msg = charge_requested(ids)

    # When charge_requested is delivered
    outcome = deliveries.deliver(msg)

    # Then one PaymentIntent is created under the event's key, for that card, and recorded
    [create] = gateway.calls
    assert create.method == "create_payment_intent"
    assert create.key == f"pw:{msg.event_id}:payment_intent"
    assert create.params == {
        "customer_id": customer_id, "payment_method": visa, "amount": 2000, "currency": "usd",
        "description": "order 42",
        "metadata": {"order": "42", "event_id": msg.event_id, "user_id": msg.user_id},
    }  # fmt: skip
    [intent] = gateway.intents.values()
    assert outcome == {"event_id": msg.event_id, "status": "succeeded"}
    event = rows.event(msg.event_id)
    assert (event["status"], event["recovery_point"]) == ("succeeded", "intent_creating")
    assert event["progress"]["api"] == "payment_intents"
    assert event["result"] == {
        "charge_id": intent.charge_id, "payment_intent_id": intent.id, "amount": 2000,
        "currency": "usd", "card_id": visa, "status": "succeeded",
    }  # fmt: skip
    charge = rows.charge(msg.event_id)
    assert charge is not None
    assert (charge["status"], charge["payment_intent_id"], charge["stripe_charge_id"]) == (
        "succeeded", intent.id, intent.charge_id,
    )  # fmt: skip
    assert telemetry.charge_outcomes == [("payment_intents", "succeeded")]


def test_a_declined_payment_intent_fails_with_the_decline_code(
    ids: Callable[[str], str], deliveries: Deliveries, gateway: FakeGateway, rows: Rows,
    customer: Callable[[str], str], card: Callable[..., str], telemetry: RecordingTelemetry,
) -> None:
    # Given a card that is declined when charged
    card(ids("user"), customer(ids("user")), DECLINED_AT_CHARGE)
    msg = charge_requested(ids)

    # When it is charged
    outcome = deliveries.deliver(msg)

    # Then the event and its charge fail with the decline code, the PaymentIntent recorded
    [intent] = gateway.intents.values()
    assert outcome["status"] == "failed" and outcome["error_code"] == "card_declined"
    event = rows.event(msg.event_id)
    assert event["result"]["decline_code"] == "insufficient_funds"
    assert event["result"]["payment_intent_id"] == intent.id
    charge = rows.charge(msg.event_id)
    assert charge is not None
    assert (charge["status"], charge["decline_code"]) == ("failed", "insufficient_funds")
    assert charge["payment_intent_id"] == intent.id
    assert charge["stripe_charge_id"] == intent.charge_id
    assert telemetry.charge_outcomes == [("payment_intents", "failed")]


def test_authentication_required_waits_for_the_customer_then_succeeds_once(
    ids: Callable[[str], str], deliveries: Deliveries, gateway: FakeGateway, rows: Rows,
    customer: Callable[[str], str], card: Callable[..., str], telemetry: RecordingTelemetry,
) -> None:
    # Given a card that needs 3-D Secure off-session
    visa = card(ids("user"), customer(ids("user")), VISA)
    gateway.require_authentication(visa)
    msg = charge_requested(ids)

    # When it is charged
    outcome = deliveries.deliver(msg)

    # Then the event waits for its customer, with what stripe.js needs in its result only
    [intent] = gateway.intents.values()
    assert outcome == {
        "event_id": msg.event_id, "status": "action_required",
        "error_code": "authentication_required",
    }  # fmt: skip
    event = rows.event(msg.event_id)
    assert (event["status"], event["recovery_point"]) == ("action_required", "intent_watching")
    assert event["error_code"] == "authentication_required"
    assert event["result"] == {
        "payment_intent_id": intent.id, "client_secret": intent.client_secret,
        "payment_method": visa,
    }  # fmt: skip
    assert event["locked_by"] is None and event["next_attempt_at"] is not None
    charge = rows.charge(msg.event_id)
    assert charge is not None
    assert (charge["status"], charge["payment_intent_id"]) == ("requires_action", intent.id)

    # When the sweeper re-drives it before the customer came back
    deliveries.redrive(msg.event_id)

    # Then it is still waiting
    assert rows.event(msg.event_id)["status"] == "action_required"

    # When the customer authenticates and the event is re-driven
    gateway.authenticate(intent.id, success=True)
    deliveries.redrive(msg.event_id)

    # Then it succeeded, without the client secret, and the charge is the PaymentIntent's
    event = rows.event(msg.event_id)
    assert event["status"] == "succeeded" and event["error_code"] is None
    assert "client_secret" not in event["result"]
    assert event["result"]["payment_intent_id"] == intent.id
    charge = rows.charge(msg.event_id)
    assert charge is not None
    assert (charge["status"], charge["stripe_charge_id"]) == ("succeeded", intent.charge_id)
    assert len(gateway.calls_to("create_payment_intent")) == 1
    assert telemetry.charge_outcomes == [
        ("payment_intents", "action_required"), ("payment_intents", "succeeded"),
    ]  # fmt: skip
    assert telemetry.finished == [("charge_requested", "succeeded")]


def test_transient_failures_between_polls_do_not_bury_a_waiting_charge(
    ids: Callable[[str], str], deliveries: Deliveries, gateway: FakeGateway, rows: Rows,
    customer: Callable[[str], str], card: Callable[..., str],
) -> None:
    # Given a charge waiting for its customer
    visa = card(ids("user"), customer(ids("user")), VISA)
    gateway.require_authentication(visa)
    msg = charge_requested(ids)
    deliveries.deliver(msg)

    # When, over many polls, Stripe fails one read in two: more failures in all than the
    # retry budget (MAX_ATTEMPTS), never that many in a row
    for _ in range(MAX_ATTEMPTS + 1):
        gateway.fail_next("retrieve_payment_intent", OutcomeUnknown("Stripe answered 500"))
        deliveries.redrive(msg.event_id)
        assert rows.event(msg.event_id)["transient_failures"] == 1
        deliveries.redrive(msg.event_id)

    # Then it still waits (each answered read starts the budget afresh), never dead
    event = rows.event(msg.event_id)
    assert (event["status"], event["transient_failures"]) == ("action_required", 0)

    # ... and the customer's authentication still ends it succeeded
    [intent] = gateway.intents.values()
    gateway.authenticate(intent.id, success=True)
    deliveries.redrive(msg.event_id)
    assert rows.event(msg.event_id)["status"] == "succeeded"


def test_an_abandoned_payment_intent_is_canceled_after_the_expiry(
    ids: Callable[[str], str], deliveries: Deliveries, gateway: FakeGateway, rows: Rows,
    customer: Callable[[str], str], card: Callable[..., str], telemetry: RecordingTelemetry,
) -> None:
    # Given a charge waiting for its customer, whose PaymentIntent is older than the expiry
    visa = card(ids("user"), customer(ids("user")), VISA)
    gateway.require_authentication(visa)
    msg = charge_requested(ids)
    deliveries.deliver(msg)
    [intent] = gateway.intents.values()
    gateway.authenticate(intent.id, success=False)
    gateway.age_intent(intent.id, EXPIRY_HOURS + 1)

    # When the sweeper re-drives it
    outcome = deliveries.redrive(msg.event_id)

    # Then the PaymentIntent is canceled (abandoned) and the event fails
    [cancel] = gateway.calls_to("cancel_payment_intent")
    assert cancel.key == f"pw:{msg.event_id}:cancel"
    assert cancel.params == {"intent_id": intent.id, "reason": "abandoned"}
    assert intent.status == "canceled"
    assert outcome["status"] == "failed" and outcome["error_code"] == "authentication_required"
    event = rows.event(msg.event_id)
    assert (event["status"], event["recovery_point"]) == ("failed", "intent_canceling")
    assert "client_secret" not in (event["result"] or {})
    charge = rows.charge(msg.event_id)
    assert charge is not None
    assert (charge["status"], charge["payment_intent_id"]) == ("canceled", intent.id)
    assert telemetry.charge_outcomes[-1] == ("payment_intents", "canceled")


def test_a_cancel_refused_because_the_customer_paid_meanwhile_succeeds(
    ids: Callable[[str], str], deliveries: Deliveries, gateway: FakeGateway, rows: Rows,
    customer: Callable[[str], str], card: Callable[..., str],
) -> None:
    # Given an expired wait, whose cancel's answer was lost while the customer paid
    visa = card(ids("user"), customer(ids("user")), VISA)
    gateway.require_authentication(visa)
    msg = charge_requested(ids)
    deliveries.deliver(msg)
    [intent] = gateway.intents.values()
    gateway.age_intent(intent.id, EXPIRY_HOURS + 1)
    gateway.authenticate(intent.id, success=True)

    # When the sweeper re-drives it (the cancel is refused: it succeeded)
    deliveries.redrive(msg.event_id)

    # Then the event succeeded with the PaymentIntent's charge
    event = rows.event(msg.event_id)
    assert event["status"] == "succeeded"
    charge = rows.charge(msg.event_id)
    assert charge is not None
    assert (charge["status"], charge["stripe_charge_id"]) == ("succeeded", intent.charge_id)


def test_a_payment_intent_canceled_on_stripe_fails_the_event(
    ids: Callable[[str], str], deliveries: Deliveries, gateway: FakeGateway, rows: Rows,
    customer: Callable[[str], str], card: Callable[..., str],
) -> None:
    # Given a charge waiting for its customer
    visa = card(ids("user"), customer(ids("user")), VISA)
    gateway.require_authentication(visa)
    msg = charge_requested(ids)
    deliveries.deliver(msg)
    [intent] = gateway.intents.values()

    # When someone cancels the PaymentIntent on Stripe and the event is re-driven
    gateway.set_intent_status(intent.id, "canceled")
    outcome = deliveries.redrive(msg.event_id)

    # Then the event fails as payment_canceled and the charge is canceled
    assert outcome["error_code"] == "payment_canceled"
    charge = rows.charge(msg.event_id)
    assert charge is not None and charge["status"] == "canceled"


def test_processing_is_watched_without_the_customer(
    ids: Callable[[str], str], deliveries: Deliveries, gateway: FakeGateway, rows: Rows,
    customer: Callable[[str], str], card: Callable[..., str],
) -> None:
    # Given a charge waiting for its customer, whose PaymentIntent Stripe now processes
    visa = card(ids("user"), customer(ids("user")), VISA)
    gateway.require_authentication(visa)
    msg = charge_requested(ids)
    deliveries.deliver(msg)
    [intent] = gateway.intents.values()
    gateway.set_intent_status(intent.id, "processing")

    # When the event is re-driven
    outcome = deliveries.redrive(msg.event_id)

    # Then it is watched again, no action asked of the customer
    assert outcome == {"event_id": msg.event_id, "status": "watching"}
    event = rows.event(msg.event_id)
    assert event["recovery_point"] == "intent_watching" and event["next_attempt_at"] is not None


def test_a_lost_create_response_is_resumed_with_the_same_key(
    ids: Callable[[str], str], deliveries: Deliveries, gateway: FakeGateway, rows: Rows,
    customer: Callable[[str], str], card: Callable[..., str],
) -> None:
    # Given a PaymentIntent created on Stripe whose response was lost
    card(ids("user"), customer(ids("user")))
    msg = charge_requested(ids)
    gateway.fail_next("create_payment_intent", OutcomeUnknown("no answer"), after_effect=True)
    deliveries.deliver(msg)
    assert rows.event(msg.event_id)["recovery_point"] == "intent_creating"

    # When the event is delivered again
    deliveries.deliver(msg)

    # Then the create is repeated under the same key: still one PaymentIntent, succeeded
    creates = gateway.calls_to("create_payment_intent")
    assert [c.key for c in creates] == [f"pw:{msg.event_id}:payment_intent"] * 2
    [intent] = gateway.intents.values()
    assert rows.event(msg.event_id)["result"]["payment_intent_id"] == intent.id


def test_after_the_key_expired_the_payment_intent_is_found_by_metadata(
    ids: Callable[[str], str], deliveries: Deliveries, gateway: FakeGateway, rows: Rows,
    customer: Callable[[str], str], card: Callable[..., str],
) -> None:
    # Given a PaymentIntent created a day ago whose response was lost, Stripe's key gone
    card(ids("user"), customer(ids("user")))
    msg = charge_requested(ids)
    gateway.fail_next("create_payment_intent", OutcomeUnknown("no answer"), after_effect=True)
    deliveries.deliver(msg)
    rows.age_pending_write(msg.event_id, hours=25)
    gateway.forget_idempotency_keys()

    # When the event is re-driven
    deliveries.redrive(msg.event_id)

    # Then the PaymentIntent is looked up, not created again
    assert len(gateway.calls_to("find_payment_intent")) == 1
    assert len(gateway.calls_to("create_payment_intent")) == 1
    [intent] = gateway.intents.values()
    assert rows.event(msg.event_id)["result"]["payment_intent_id"] == intent.id


def test_a_charge_waiting_for_authentication_counts_against_the_velocity_limit(
    ids: Callable[[str], str], deliveries: Deliveries, gateway: FakeGateway, rows: Rows,
    customer: Callable[[str], str], card: Callable[..., str], settings: Settings,
) -> None:
    # Given a limit of one charge an hour and a first charge waiting for its customer
    limited = settings.model_copy(update={"user_charge_limit": 1})
    deliveries.res = replace(deliveries.res, settings=limited)
    visa = card(ids("user"), customer(ids("user")), VISA)
    gateway.require_authentication(visa)
    deliveries.deliver(charge_requested(ids))

    # When a second charge is requested
    second = ChargeRequested(
        event_id=ids("second"), user_id=ids("user"), amount=2000, currency="usd"
    )
    outcome = deliveries.deliver(second)

    # Then it is refused before Stripe
    assert outcome["error_code"] == "velocity_limit"
    assert len(gateway.intents) == 1


def test_a_forced_replay_of_an_abandoned_charge_is_a_new_payment_intent(
    ids: Callable[[str], str], deliveries: Deliveries, gateway: FakeGateway, rows: Rows,
    customer: Callable[[str], str], card: Callable[..., str], engine: Engine, settings: Settings,
) -> None:
    # Given a charge failed authentication_required, its PaymentIntent canceled
    visa = card(ids("user"), customer(ids("user")), VISA)
    gateway.require_authentication(visa)
    msg = charge_requested(ids)
    deliveries.deliver(msg)
    [first] = gateway.intents.values()
    gateway.age_intent(first.id, EXPIRY_HOURS + 1)
    deliveries.redrive(msg.event_id)
    assert rows.event(msg.event_id)["status"] == "failed"
    gateway._needs_authentication.clear()  # the customer's bank no longer asks

    # When an operator forces a new generation and it runs
    outcome, _ = operator_replay(engine, settings, msg.event_id, force=True, gateway=gateway)
    assert isinstance(outcome, Replayed), outcome
    assert outcome.recovery_point == "intent_creating"
    deliveries.redrive(msg.event_id)

    # Then a second PaymentIntent, under the new generation's key, pays; the first one
    # is in the replay history
    second = gateway.calls_to("create_payment_intent")[-1]
    assert second.key == f"pwg:1:{msg.event_id}:payment_intent"
    event = rows.event(msg.event_id)
    assert event["status"] == "succeeded" and event["result"]["payment_intent_id"] != first.id
    [history] = event["progress"]["replays"]
    assert history["charge"]["payment_intent_id"] == first.id
    charge = rows.charge(msg.event_id)
    assert charge is not None
    assert charge["payment_intent_id"] == event["result"]["payment_intent_id"]


def test_a_forced_replay_is_refused_when_stripe_holds_a_succeeded_payment_intent(
    ids: Callable[[str], str], deliveries: Deliveries, gateway: FakeGateway, rows: Rows,
    customer: Callable[[str], str], card: Callable[..., str], engine: Engine, settings: Settings,
) -> None:
    # Given a declined charge, while Stripe holds a succeeded PaymentIntent of the event
    customer_id = customer(ids("user"))
    declining = card(ids("user"), customer_id, DECLINED_AT_CHARGE)
    msg = charge_requested(ids)
    deliveries.deliver(msg)
    gateway.stop_declining(declining)
    paid = gateway.create_payment_intent(
        "pw:elsewhere", customer_id=customer_id, payment_method=declining, amount=msg.amount,
        currency=msg.currency, description=None, metadata=msg.stripe_metadata(),
    )  # fmt: skip
    failed = rows.event(msg.event_id)

    # When an operator forces a new generation
    outcome, published = operator_replay(engine, settings, msg.event_id, force=True,
                                         gateway=gateway)  # fmt: skip

    # Then it is refused, naming the PaymentIntent, and nothing changed
    assert isinstance(outcome, Refused), outcome
    assert f"succeeded PaymentIntent of this event, {paid.intent_id}" in outcome.reason
    assert published == [] and rows.event(msg.event_id) == failed
