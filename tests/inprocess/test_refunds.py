"""refund_requested: what remains of a charge is judged under its lock before Stripe is
called; one Stripe refund per event; the refunds row and the charge's `amount_refunded`
(re-derived from the succeeded refunds) agree with Stripe."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from core.errors import OutcomeUnknown
from core.settings import Settings
from tasks.messages import ChargeRequested, RefundRequested
from tests.inprocess._support import Deliveries, RecordingTelemetry, Rows
from tests.inprocess.fake_gateway import DECLINED_AT_CHARGE, FakeGateway
from tests.inprocess.refund_support import CHARGED, paid_charge, refund_requested


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"charge_api": "charges"})


def refund_row(rows: Rows, event_id: str) -> dict[str, object] | None:
    return rows._one("SELECT * FROM refunds WHERE event_id = :e", e=event_id)


def test_a_refund_without_amount_refunds_the_whole_charge_once(
    ids: Callable[[str], str], deliveries: Deliveries, gateway: FakeGateway, rows: Rows,
    customer: Callable[[str], str], card: Callable[..., str], telemetry: RecordingTelemetry,
) -> None:
    # Given a succeeded charge of 2000
    paid = paid_charge(ids, deliveries, rows, customer, card)
    msg = refund_requested(ids, paid)

    # When a refund without amount is requested
    outcome = deliveries.deliver(msg)

    # Then Stripe refunds all of it once, under the event's key, with our metadata
    assert outcome == {"event_id": msg.event_id, "status": "succeeded"}
    [create] = gateway.calls_to("create_refund")
    assert create.key == f"pw:{msg.event_id}:refund"
    assert create.params == {
        "charge_id": paid.charge_id, "amount": CHARGED, "reason": "requested_by_customer",
        "metadata": {"ticket": "T-7", "event_id": msg.event_id, "user_id": msg.user_id},
    }  # fmt: skip
    [refund] = gateway.refunds.values()
    event = rows.event(msg.event_id)
    assert (event["status"], event["recovery_point"]) == ("succeeded", "refund_creating")
    assert event["result"] == {
        "refund_id": refund.id, "charge_event_id": paid.event_id, "charge_id": paid.charge_id,
        "amount": CHARGED, "currency": "usd", "status": "succeeded",
        "amount_refunded": CHARGED, "reason": "requested_by_customer",
    }  # fmt: skip
    row = refund_row(rows, msg.event_id)
    assert row is not None
    assert (row["status"], row["stripe_refund_id"], row["amount"]) == (
        "succeeded", refund.id, CHARGED,
    )  # fmt: skip
    assert (row["user_id"], row["charge_event_id"], row["currency"]) == (
        paid.user_id, paid.event_id, "usd",
    )  # fmt: skip
    charge = rows.charge(paid.event_id)
    assert charge is not None and charge["amount_refunded"] == CHARGED
    assert gateway.amount_refunded(paid.charge_id) == CHARGED
    assert ("refund_requested", "succeeded") in telemetry.finished


def test_partial_refunds_add_up_and_an_over_refund_is_refused_before_stripe(
    ids: Callable[[str], str], deliveries: Deliveries, gateway: FakeGateway, rows: Rows,
    customer: Callable[[str], str], card: Callable[..., str],
) -> None:
    # Given a charge of 2000 refunded 500 and then 700
    paid = paid_charge(ids, deliveries, rows, customer, card)
    first = deliveries.deliver(refund_requested(ids, paid, "r1", amount=500))
    second = deliveries.deliver(refund_requested(ids, paid, "r2", amount=700))
    assert first["status"] == second["status"] == "succeeded"
    assert rows.event(ids("r2"))["result"]["amount_refunded"] == 1200

    # When 900 more is asked (800 remain)
    over = refund_requested(ids, paid, "r3", amount=900)
    outcome = deliveries.deliver(over)

    # Then it fails before Stripe, without a refunds row; the charge keeps 1200 refunded
    assert outcome["status"] == "failed" and outcome["error_code"] == "refund_exceeds_charge"
    assert len(gateway.calls_to("create_refund")) == 2
    event = rows.event(over.event_id)
    assert (event["status"], event["recovery_point"]) == ("failed", "started")
    assert "only 800 of the charge's 2000 USD remains" in event["error_message"]
    assert refund_row(rows, over.event_id) is None
    charge = rows.charge(paid.event_id)
    assert charge is not None and charge["amount_refunded"] == 1200

    # And the rest without amount refunds exactly the 800; after it nothing is refundable
    rest = refund_requested(ids, paid, "r4")
    assert deliveries.deliver(rest)["status"] == "succeeded"
    assert rows.event(rest.event_id)["result"]["amount"] == 800
    charge = rows.charge(paid.event_id)
    assert charge is not None and charge["amount_refunded"] == CHARGED
    assert gateway.amount_refunded(paid.charge_id) == CHARGED
    nothing_left = deliveries.deliver(refund_requested(ids, paid, "r5"))
    assert nothing_left["error_code"] == "charge_not_refundable"
    assert len(gateway.calls_to("create_refund")) == 3


def test_a_refund_of_an_unknown_charge_or_another_users_is_charge_not_found(
    ids: Callable[[str], str], deliveries: Deliveries, gateway: FakeGateway, rows: Rows,
    customer: Callable[[str], str], card: Callable[..., str],
) -> None:
    # Given Ada's succeeded charge, and Bob
    ada = paid_charge(ids, deliveries, rows, customer, card, user="ada")
    unknown = refund_requested(ids, ada, "unknown").model_copy(
        update={"charge_event_id": ids("no-such-charge")}
    )
    bobs = refund_requested(ids, ada, "bobs", user_id=ids("bob"))

    # When a refund names a charge event that made no charge, and Bob refunds Ada's charge
    outcomes = [deliveries.deliver(unknown), deliveries.deliver(bobs)]

    # Then both fail with charge_not_found, before Stripe, and Ada's charge is untouched
    assert [o["error_code"] for o in outcomes] == ["charge_not_found"] * 2
    assert gateway.calls_to("create_refund") == []
    for msg in (unknown, bobs):
        event = rows.event(msg.event_id)
        assert (event["status"], event["recovery_point"]) == ("failed", "started")
        assert event["result"] == {"charge_event_id": msg.charge_event_id, "refund_id": None}
        assert refund_row(rows, msg.event_id) is None
    charge = rows.charge(ada.event_id)
    assert charge is not None and charge["amount_refunded"] == 0


def test_a_refund_of_a_failed_or_unfinished_charge_is_not_refundable(
    ids: Callable[[str], str], deliveries: Deliveries, gateway: FakeGateway, rows: Rows,
    customer: Callable[[str], str], card: Callable[..., str],
) -> None:
    # Given a declined charge, and a charge whose Stripe answer is not known yet (pending)
    user_id = ids("user")
    customer_id = customer(user_id)
    card(user_id, customer_id, DECLINED_AT_CHARGE)
    declined = ChargeRequested(
        event_id=ids("declined"), user_id=user_id, amount=900, currency="usd"
    )
    assert deliveries.deliver(declined)["error_code"] == "card_declined"
    gateway.stop_declining(gateway.customers[customer_id].cards[0])
    unfinished = ChargeRequested(
        event_id=ids("unknown"), user_id=user_id, amount=900, currency="usd"
    )
    gateway.fail_next("create_charge", OutcomeUnknown("no answer"))
    deliveries.deliver(unfinished)
    pending_charge = rows.charge(unfinished.event_id)
    assert pending_charge is not None and pending_charge["status"] == "pending"

    # When each is to be refunded
    refunds = [
        RefundRequested(event_id=ids(f"refund-{name}"), user_id=user_id, charge_event_id=charge)
        for name, charge in (("declined", declined.event_id), ("unknown", unfinished.event_id))
    ]
    outcomes = [deliveries.deliver(msg) for msg in refunds]

    # Then both fail at once with charge_not_refundable, saying the charge is not succeeded
    assert [o["error_code"] for o in outcomes] == ["charge_not_refundable"] * 2
    assert gateway.calls_to("create_refund") == []
    assert "is failed, not succeeded" in rows.event(ids("refund-declined"))["error_message"]
    assert "is pending, not succeeded" in rows.event(ids("refund-unknown"))["error_message"]


def test_stripe_holding_less_than_we_do_fails_the_refund_and_frees_its_amount(
    ids: Callable[[str], str], deliveries: Deliveries, gateway: FakeGateway, rows: Rows,
    customer: Callable[[str], str], card: Callable[..., str],
) -> None:
    # Given a charge of 2000 of which 1500 were refunded on the dashboard
    paid = paid_charge(ids, deliveries, rows, customer, card)
    gateway.refund_outside(paid.charge_id, 1500)

    # When payworker refunds 1000 (it believes 2000 remain), then all that remains
    partial = refund_requested(ids, paid, "partial", amount=1000)
    outcome = deliveries.deliver(partial)

    # Then Stripe refuses (amount_too_large): the event fails refund_exceeds_charge, its
    # row fails with that reason, and nothing counts against the charge
    assert outcome["status"] == "failed" and outcome["error_code"] == "refund_exceeds_charge"
    event = rows.event(partial.event_id)
    assert (event["status"], event["recovery_point"]) == ("failed", "refund_creating")
    assert event["error_message"].startswith("Stripe refused the refund: Refund amount (1000)")
    assert event["result"]["status"] == "failed"
    assert event["result"]["failure_reason"] == "refund_exceeds_charge"
    row = refund_row(rows, partial.event_id)
    assert row is not None
    assert (row["status"], row["failure_reason"], row["stripe_refund_id"]) == (
        "failed", "refund_exceeds_charge", None,
    )  # fmt: skip
    charge = rows.charge(paid.event_id)
    assert charge is not None and charge["amount_refunded"] == 0

    # And once the dashboard refunded everything, Stripe's charge_already_refunded is the same
    gateway.refund_outside(paid.charge_id, 500)
    rest = refund_requested(ids, paid, "rest")
    assert deliveries.deliver(rest)["error_code"] == "refund_exceeds_charge"
    rest_row = refund_row(rows, rest.event_id)
    assert rest_row is not None and rest_row["status"] == "failed"
