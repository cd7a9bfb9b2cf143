"""setup_requested, recovery point by recovery point: one SetupIntent per event, its client
secret in the event's result and nowhere else."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from core.errors import OutcomeUnknown
from tasks.messages import SetupRequested
from tests.inprocess._support import Deliveries, Rows
from tests.inprocess.fake_gateway import FakeGateway


def setup_requested(ids: Callable[[str], str], usage: str = "off_session") -> SetupRequested:
    return SetupRequested(event_id=ids("setup"), user_id=ids("user"), usage=usage)


def test_setup_requested_creates_a_setup_intent_and_hands_its_secret_to_the_result_only(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a registered user
    customer_id = customer(ids("user"))
    msg = setup_requested(ids, "on_session")

    # When setup_requested is delivered
    with caplog.at_level(logging.DEBUG):
        outcome = deliveries.deliver(msg)

    # Then one SetupIntent is created for the customer under the event's key and metadata
    [create] = gateway.calls
    assert (create.method, create.key) == ("create_setup_intent", f"pw:{msg.event_id}:setup")
    assert create.params == {
        "customer_id": customer_id, "usage": "on_session",
        "metadata": {"event_id": msg.event_id, "user_id": msg.user_id},
    }  # fmt: skip
    [seti] = gateway.setup_intents.values()
    # and the event's result is its id and client secret, which appear nowhere else: not
    # in the task's outcome, the progress or a log line
    event = rows.event(msg.event_id)
    assert (event["status"], event["recovery_point"]) == ("succeeded", "setup_creating")
    assert event["result"] == {"setup_intent_id": seti.id, "client_secret": seti.client_secret}
    assert seti.client_secret.startswith(f"{seti.id}_secret_")
    assert seti.client_secret not in repr(outcome)
    assert seti.client_secret not in repr(event["progress"])
    assert seti.client_secret not in caplog.text
    assert seti.client_secret not in repr(seti)


def test_setup_requested_waits_for_a_user_not_registered_yet(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
) -> None:
    # Given a user whose user_registered has not been processed
    msg = setup_requested(ids)

    # When setup_requested is delivered
    outcome = deliveries.deliver(msg)

    # Then it waits for the customer without spending its budget; Stripe is not called
    assert outcome["status"] == "retry_scheduled"
    assert gateway.calls == []
    event = rows.event(msg.event_id)
    assert (event["status"], event["recovery_point"]) == ("processing", "started")
    assert event["transient_failures"] == 0
    assert event["last_error"].startswith("customer_not_found: user ")


def test_setup_creating_resumes_after_a_lost_response_with_the_same_key(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
) -> None:
    # Given a create that reached Stripe but whose response was lost
    customer(ids("user"))
    msg = setup_requested(ids)
    gateway.fail_next("create_setup_intent", OutcomeUnknown("no answer"), after_effect=True)
    deliveries.deliver(msg)
    waiting = rows.event(msg.event_id)
    assert (waiting["status"], waiting["recovery_point"]) == ("processing", "setup_creating")
    assert waiting["result"] is None

    # When the event is delivered again
    deliveries.deliver(msg)

    # Then the create is repeated under the same key and Stripe answers the same SetupIntent
    assert {c.key for c in gateway.calls_to("create_setup_intent")} == {f"pw:{msg.event_id}:setup"}
    [seti] = gateway.setup_intents.values()
    assert rows.event(msg.event_id)["result"]["setup_intent_id"] == seti.id


def test_setup_creating_after_the_key_expired_finds_the_setup_intent_by_metadata(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
) -> None:
    # Given a create that reached Stripe, its response lost, and a day gone by
    customer_id = customer(ids("user"))
    msg = setup_requested(ids)
    gateway.fail_next("create_setup_intent", OutcomeUnknown("no answer"), after_effect=True)
    deliveries.deliver(msg)
    rows.age_pending_write(msg.event_id, hours=25)
    gateway.forget_idempotency_keys()

    # When the event is delivered again
    deliveries.deliver(msg)

    # Then the SetupIntent is found by the event's metadata, not created again
    assert gateway.methods_called() == ["create_setup_intent", "find_setup_intent"]
    [find] = gateway.calls_to("find_setup_intent")
    assert find.params == {"customer_id": customer_id, "event_id": msg.event_id, "generation": 0}
    [seti] = gateway.setup_intents.values()
    event = rows.event(msg.event_id)
    assert event["status"] == "succeeded"
    assert event["result"] == {"setup_intent_id": seti.id, "client_secret": seti.client_secret}
