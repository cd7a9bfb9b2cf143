"""How the runner settles an error, disposition by disposition (core/errors.py): FAIL is
final, RETRY spends the budget and then buries, WAIT and CONFIGURATION wait for free, STOP
writes nothing; foreign exceptions are translated first."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import OperationalError

from core.errors import (
    ConfigurationFault,
    OutcomeUnknown,
    RateLimitedLocally,
    TransientError,
)
from core.settings import Settings
from db.ledger import now
from tasks.messages import CardTokenReceived, ChargeRequested, UserRegistered
from tests.inprocess._support import (
    MAX_ATTEMPTS,
    PREREQUISITE_WAIT_SECONDS,
    RETRY_BACKOFF_MAX,
    WORKER_A,
    WORKER_B,
    Deliveries,
    RecordingTelemetry,
    Rows,
    assert_scheduled,
)
from tests.inprocess.fake_gateway import VISA, FakeGateway


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """These tests pin the Charges API (PAYWORKER_CHARGE_API=charges): the PaymentIntents
    path has its own (test_payment_intents.py)."""
    return settings.model_copy(update={"charge_api": "charges"})


def charge_requested(ids: Callable[[str], str]) -> ChargeRequested:
    return ChargeRequested(event_id=ids("charge"), user_id=ids("user"), amount=2000, currency="usd")


def registration(ids: Callable[[str], str]) -> UserRegistered:
    return UserRegistered(event_id=ids("reg"), user_id=ids("user"), email="ada@example.com")


# ---- FAIL: see test_charges.py (a decline, amount_too_small) and the translated DataError ----


def test_a_value_postgres_cannot_store_fails_the_event_as_invalid(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
) -> None:
    # Given a token whose card brand is longer than the cards.brand column (64)
    customer(ids("user"))
    token = gateway.add_token(VISA, brand="B" * 80)
    msg = CardTokenReceived(event_id=ids("card"), user_id=ids("user"), token=token)

    # When it is delivered
    outcome = deliveries.deliver(msg)

    # Then Postgres' DataError is translated to invalid_message: final, no budget spent
    assert outcome["status"] == "failed" and outcome["error_code"] == "invalid_message"
    event = rows.event(msg.event_id)
    assert (event["status"], event["recovery_point"]) == ("failed", "card_attaching")
    assert event["error_code"] == "invalid_message"
    assert event["error_message"].startswith("the message holds values Postgres cannot store")
    assert event["transient_failures"] == 0 and event["next_attempt_at"] is None
    assert event["sealed_token"] is None
    assert rows.cards(msg.user_id) == []


# ---- RETRY ---------------------------------------------------------------------------------


def test_a_transient_error_is_a_counted_retry_with_backoff(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
    card: Callable[..., str],
    telemetry: RecordingTelemetry,
) -> None:
    # Given Stripe answers 429 to the charge
    card(ids("user"), customer(ids("user")))
    msg = charge_requested(ids)
    gateway.fail_next("create_charge", TransientError("rate limited", code="stripe_rate_limited"))

    # When the charge is delivered
    before = now()
    outcome = deliveries.deliver(msg)

    # Then one failure is counted and the next attempt is due after the first backoff
    assert outcome["status"] == "retry_scheduled"
    assert 0.5 <= outcome["delay"] <= 1.0
    event = rows.event(msg.event_id)
    assert (event["status"], event["recovery_point"]) == ("processing", "charge_creating")
    assert event["transient_failures"] == 1
    assert event["last_error"] == "stripe_rate_limited: rate limited"
    assert event["error_code"] is None
    assert_scheduled(event, before, 0.5, 1.0)
    assert set(event["progress"]) >= {"customer_id", "card_id", "write_started_at"}
    charge = rows.charge(msg.event_id)
    assert charge is not None and charge["status"] == "pending"
    assert telemetry.retries == [("charge_requested", "stripe_rate_limited")]
    assert telemetry.finished == []


def test_the_last_transient_error_of_the_budget_buries_the_event(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
    telemetry: RecordingTelemetry,
) -> None:
    # Given an attach that fails before reaching Stripe on every attempt of the budget
    customer(ids("user"))
    msg = CardTokenReceived(
        event_id=ids("card"), user_id=ids("user"), token=gateway.add_token(VISA)
    )
    for _ in range(MAX_ATTEMPTS):
        gateway.fail_next("attach_card", OutcomeUnknown("Stripe answered 503"))

    # When it is delivered as often as the budget allows
    outcomes = [deliveries.deliver(msg)["status"] for _ in range(MAX_ATTEMPTS)]

    # Then the last failure buries it: dead, with its sealed token kept for a replay
    assert outcomes == ["retry_scheduled"] * (MAX_ATTEMPTS - 1) + ["dead"]
    event = rows.event(msg.event_id)
    assert (event["status"], event["recovery_point"]) == ("dead", "card_attaching")
    assert event["error_code"] == "retries_exhausted"
    assert event["error_message"] == (
        f"gave up after {MAX_ATTEMPTS} transient failures;"
        " last: stripe_outcome_unknown: Stripe answered 503"
    )
    assert event["transient_failures"] == MAX_ATTEMPTS
    assert event["attempts"] == MAX_ATTEMPTS
    assert event["next_attempt_at"] is None and event["locked_by"] is None
    assert event["completed_at"] is not None
    assert event["sealed_token"] is not None
    assert gateway.cards == {}
    assert telemetry.finished == [("card_token_received", "dead")]
    assert len(telemetry.retries) == MAX_ATTEMPTS - 1


@pytest.mark.parametrize(
    ("foreign", "code", "last_error"),
    [
        (RuntimeError("boom"), "internal_error", "internal_error: RuntimeError: boom"),
        (SoftTimeLimitExceeded("soft limit"), "time_limit", "SoftTimeLimitExceeded: "),
        (
            OperationalError("SELECT 1", {}, Exception("server closed the connection")),
            "database",
            "OperationalError: server closed the connection",
        ),
    ],
    ids=["bug", "soft-time-limit", "database"],
)
def test_a_foreign_exception_is_translated_into_a_counted_retry(
    foreign: BaseException, code: str, last_error: str,
    ids: Callable[[str], str], deliveries: Deliveries, gateway: FakeGateway, rows: Rows,
    telemetry: RecordingTelemetry,
) -> None:  # fmt: skip
    # Given the gateway raises an exception that is not one of ours
    msg = registration(ids)
    gateway.fail_next("create_customer", foreign)

    # When the event is delivered
    outcome = deliveries.deliver(msg)

    # Then it is translated (core.errors.translate) and retried within the budget
    assert outcome["status"] == "retry_scheduled"
    event = rows.event(msg.event_id)
    assert (event["status"], event["recovery_point"]) == ("processing", "customer_creating")
    assert event["transient_failures"] == 1
    assert event["last_error"].startswith(last_error)
    assert event["next_attempt_at"] is not None
    assert telemetry.retries == [("user_registered", code)]


def test_an_unknown_recovery_point_is_an_internal_error_retried(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
) -> None:
    # Given an event whose recovery point its workflow does not know
    msg = charge_requested(ids)
    claim = deliveries.claim_at(msg, "nowhere", {})

    # When it runs
    deliveries.run(msg, claim)

    # Then it is a counted retry for a human to look at, and Stripe is not called
    assert gateway.calls == []
    event = rows.event(msg.event_id)
    assert (event["status"], event["recovery_point"]) == ("processing", "nowhere")
    assert event["transient_failures"] == 1
    assert event["last_error"] == "charge_requested has no phase at 'nowhere'"


# ---- WAIT ------------------------------------------------------------------------------------


def test_a_missing_prerequisite_waits_without_spending_budget_until_it_arrives(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
    card: Callable[..., str],
    telemetry: RecordingTelemetry,
) -> None:
    # Given a charge for a user whose user_registered has not been processed yet
    msg = charge_requested(ids)

    # When the charge is delivered
    before = now()
    outcome = deliveries.deliver(msg)

    # Then it waits (within the prerequisite window), spending no budget
    assert outcome["status"] == "retry_scheduled"
    event = rows.event(msg.event_id)
    assert (event["status"], event["recovery_point"]) == ("processing", "started")
    assert event["transient_failures"] == 0
    assert event["last_error"].startswith("customer_not_found: user ")
    assert_scheduled(event, before, 0.5, 1.0)
    assert rows.charge(msg.event_id) is None
    assert gateway.calls == []
    assert telemetry.retries == [("charge_requested", "customer_not_found")]

    # When the customer and card arrive and the charge is delivered again
    card(msg.user_id, customer(msg.user_id))
    deliveries.deliver(msg)

    # Then it is charged
    event = rows.event(msg.event_id)
    assert event["status"] == "succeeded"
    assert (event["attempts"], event["transient_failures"]) == (2, 0)
    assert len(gateway.charges) == 1


def test_a_missing_prerequisite_fails_once_the_window_has_passed(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    telemetry: RecordingTelemetry,
) -> None:
    # Given a charge that has waited for its user's customer since it was received, longer
    # than PAYWORKER_PREREQUISITE_WAIT_SECONDS ago
    msg = charge_requested(ids)
    deliveries.deliver(msg)
    rows.backdate_receipt(msg.event_id, PREREQUISITE_WAIT_SECONDS + 1)

    # When it is delivered again, the customer still missing
    outcome = deliveries.deliver(msg)

    # Then it fails with customer_not_found; no budget was ever spent
    assert outcome["status"] == "failed" and outcome["error_code"] == "customer_not_found"
    event = rows.event(msg.event_id)
    assert (event["status"], event["recovery_point"]) == ("failed", "started")
    assert event["error_code"] == "customer_not_found"
    assert event["transient_failures"] == 0 and event["next_attempt_at"] is None
    assert rows.charge(msg.event_id) is None
    assert gateway.calls == []
    assert telemetry.finished == [("charge_requested", "failed")]


def test_our_own_rate_limit_waits_without_spending_budget(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
    card: Callable[..., str],
    telemetry: RecordingTelemetry,
) -> None:
    # Given the local limiter has no Stripe slot for the charge in time
    card(ids("user"), customer(ids("user")))
    msg = charge_requested(ids)
    gateway.fail_next("create_charge", RateLimitedLocally("no Stripe slot within 10.0s"))

    # When the charge is delivered
    before = now()
    outcome = deliveries.deliver(msg)

    # Then it waits for the first backoff, no budget spent; Stripe has no charge
    assert outcome["status"] == "retry_scheduled"
    event = rows.event(msg.event_id)
    assert (event["status"], event["recovery_point"]) == ("processing", "charge_creating")
    assert event["transient_failures"] == 0
    assert event["last_error"] == "stripe_rate_limited_locally: no Stripe slot within 10.0s"
    assert_scheduled(event, before, 0.5, 1.0)
    assert gateway.charges == {}
    assert telemetry.retries == [("charge_requested", "stripe_rate_limited_locally")]


# ---- CONFIGURATION ---------------------------------------------------------------------------


def test_a_configuration_fault_waits_for_free_as_long_as_it_lasts(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    telemetry: RecordingTelemetry,
) -> None:
    # Given Stripe refuses our API key, more times than the retry budget
    msg = registration(ids)
    refusals = MAX_ATTEMPTS + 1
    for _ in range(refusals):
        gateway.fail_next("create_customer", ConfigurationFault("Stripe rejected the API key"))

    # When the event is delivered that often
    before = now()
    outcomes = [deliveries.deliver(msg)["status"] for _ in range(refusals)]

    # Then it waits the longest backoff each time, spending nothing, never dead
    assert outcomes == ["retry_scheduled"] * refusals
    event = rows.event(msg.event_id)
    assert (event["status"], event["recovery_point"]) == ("processing", "customer_creating")
    assert event["transient_failures"] == 0
    assert event["last_error"] == "stripe_configuration: Stripe rejected the API key"
    assert_scheduled(event, before, RETRY_BACKOFF_MAX, RETRY_BACKOFF_MAX)
    assert telemetry.retries == [("user_registered", "stripe_configuration")] * refusals

    # When the key is fixed and the event delivered again
    deliveries.deliver(msg)

    # Then it succeeds, with the one key its attempts shared
    assert rows.event(msg.event_id)["status"] == "succeeded"
    assert {c.key for c in gateway.calls} == {f"pw:{msg.event_id}:customer"}
    assert len(gateway.customers) == 1


# ---- STOP ------------------------------------------------------------------------------------


def test_a_run_whose_lease_was_taken_over_writes_nothing(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
    card: Callable[..., str],
    telemetry: RecordingTelemetry,
) -> None:
    # Given a charge at charge_creating, claimed by worker A whose lease then ran out, and
    # worker B that took the event over
    card(ids("user"), customer(ids("user")))
    msg = charge_requested(ids)
    gateway.fail_next("create_charge", OutcomeUnknown("connection refused"))
    deliveries.deliver(msg)
    stale = deliveries.claim(msg, owner=WORKER_A, lease_seconds=0)
    fresh = deliveries.claim(msg, owner=WORKER_B)

    # When A's run goes on with its stale claim
    outcome = deliveries.run(msg, stale)

    # Then A's charge reaches Stripe, but A writes nothing: its outcome is rolled back
    assert outcome == {"event_id": msg.event_id, "status": "lease_lost"}
    [charge_id] = gateway.charges
    event = rows.event(msg.event_id)
    assert (event["status"], event["recovery_point"]) == ("processing", "charge_creating")
    assert event["locked_by"] == WORKER_B
    assert event["result"] is None and event["transient_failures"] == 1
    charge = rows.charge(msg.event_id)
    assert charge is not None
    assert (charge["status"], charge["stripe_charge_id"]) == ("pending", None)
    assert telemetry.finished == []

    # When B runs the event
    deliveries.run(msg, fresh)

    # Then B repeats the charge under the same key and records the one charge
    assert {c.key for c in gateway.calls_to("create_charge")} == {f"pw:{msg.event_id}:charge"}
    assert list(gateway.charges) == [charge_id]
    event = rows.event(msg.event_id)
    assert (event["status"], event["result"]["charge_id"]) == ("succeeded", charge_id)
    charge = rows.charge(msg.event_id)
    assert charge is not None
    assert (charge["status"], charge["stripe_charge_id"]) == ("succeeded", charge_id)


def test_a_run_that_lost_its_lease_does_not_count_its_failure(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    telemetry: RecordingTelemetry,
) -> None:
    # Given worker A's claim ran out and worker B took the event over
    msg = registration(ids)
    stale = deliveries.claim(msg, owner=WORKER_A, lease_seconds=0)
    deliveries.claim(msg, owner=WORKER_B)
    gateway.fail_next("create_customer", OutcomeUnknown("no answer"))

    # When A's run meets a transient error
    outcome = deliveries.run(msg, stale)

    # Then settling it finds the lease gone: nothing counted, nothing scheduled
    assert outcome["status"] == "lease_lost"
    event = rows.event(msg.event_id)
    assert (event["status"], event["recovery_point"]) == ("processing", "started")
    assert event["locked_by"] == WORKER_B
    assert event["transient_failures"] == 0
    assert event["next_attempt_at"] is None and event["last_error"] is None
    assert telemetry.retries == []
