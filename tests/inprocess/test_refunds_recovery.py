"""refund_requested when things go wrong or happen at once: a lost Stripe answer is
resumed with the same key, a forgotten key is looked up by metadata, concurrent refunds of
one charge are judged one after the other under its lock, a pending Stripe refund is
watched, a failed refund is not replayed."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, cast

import pytest
from sqlalchemy import Engine, text

from core.errors import OutcomeUnknown
from core.settings import Settings
from db.ledger import now
from tasks.gateway import StripeGateway
from tasks.replay import Refused, ask_stripe, replay
from tests.inprocess._support import WORKER_B, Deliveries, Rows
from tests.inprocess.fake_gateway import FakeGateway
from tests.inprocess.refund_support import CHARGED, paid_charge, refund_requested


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"charge_api": "charges"})


def refund_row(rows: Rows, event_id: str) -> dict[str, Any]:
    row = rows._one("SELECT * FROM refunds WHERE event_id = :e", e=event_id)
    assert row is not None, f"no refunds row for {event_id!r}"
    return row


def amount_refunded(rows: Rows, charge_event_id: str) -> int:
    charge = rows.charge(charge_event_id)
    assert charge is not None
    return int(charge["amount_refunded"])


def test_refund_creating_resumes_after_a_lost_answer_with_the_same_key(
    ids: Callable[[str], str], deliveries: Deliveries, gateway: FakeGateway, rows: Rows,
    customer: Callable[[str], str], card: Callable[..., str],
) -> None:
    # Given a refund that Stripe made but whose answer was lost
    paid = paid_charge(ids, deliveries, rows, customer, card)
    msg = refund_requested(ids, paid, amount=600)
    gateway.fail_next("create_refund", OutcomeUnknown("no answer"), after_effect=True)
    deliveries.deliver(msg)
    waiting = rows.event(msg.event_id)
    assert (waiting["status"], waiting["recovery_point"]) == ("processing", "refund_creating")
    assert refund_row(rows, msg.event_id)["status"] == "pending"
    assert amount_refunded(rows, paid.event_id) == 0

    # When the event is delivered again
    deliveries.deliver(msg)

    # Then the create is repeated under the same key and Stripe answers the same refund
    creates = gateway.calls_to("create_refund")
    assert [c.key for c in creates] == [f"pw:{msg.event_id}:refund"] * 2
    [refund] = gateway.refunds.values()
    assert rows.event(msg.event_id)["status"] == "succeeded"
    row = refund_row(rows, msg.event_id)
    assert (row["status"], row["stripe_refund_id"]) == ("succeeded", refund.id)
    assert amount_refunded(rows, paid.event_id) == 600 == gateway.amount_refunded(paid.charge_id)


@pytest.mark.parametrize("reached_stripe", [True, False])
def test_after_the_key_expired_the_refund_is_looked_up_by_metadata_first(
    reached_stripe: bool, ids: Callable[[str], str], deliveries: Deliveries,
    gateway: FakeGateway, rows: Rows, customer: Callable[[str], str], card: Callable[..., str],
) -> None:
    # Given a refund whose create may have reached Stripe a day ago, its key forgotten since
    paid = paid_charge(ids, deliveries, rows, customer, card)
    msg = refund_requested(ids, paid, amount=700)
    gateway.fail_next("create_refund", OutcomeUnknown("no answer"), after_effect=reached_stripe)
    deliveries.deliver(msg)
    gateway.forget_idempotency_keys()
    rows.age_pending_write(msg.event_id, hours=25)

    # When the event is delivered again
    deliveries.deliver(msg)

    # Then Stripe is searched by the event's metadata before anything is created; there is
    # one refund either way
    methods = [m for m in gateway.methods_called() if "refund" in m]
    creates_after_search = 0 if reached_stripe else 1
    assert methods == ["create_refund", "find_refund"] + ["create_refund"] * creates_after_search
    [refund] = gateway.refunds.values()
    assert refund.metadata["event_id"] == msg.event_id
    assert refund_row(rows, msg.event_id)["stripe_refund_id"] == refund.id
    assert rows.event(msg.event_id)["status"] == "succeeded"
    assert amount_refunded(rows, paid.event_id) == 700


def waiting_for_locks(engine: Engine, count: int, timeout: float = 10.0) -> None:
    """Wait until `count` sessions of this database wait for a row lock of charges."""
    deadline = time.monotonic() + timeout
    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock' AND query LIKE '%FROM charges%FOR UPDATE%'"
    )
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            if conn.execute(query).scalar_one() >= count:
                return
        time.sleep(0.02)
    raise AssertionError(f"fewer than {count} refunds waited for the charge's lock")


def test_concurrent_refunds_of_one_charge_never_exceed_it(
    ids: Callable[[str], str], deliveries: Deliveries, gateway: FakeGateway, rows: Rows,
    customer: Callable[[str], str], card: Callable[..., str], engine: Engine,
) -> None:
    # Given a charge of 2000, its row locked for now, and two refunds of 1200 each under way
    # (each waits for the lock: both have read nothing yet)
    paid = paid_charge(ids, deliveries, rows, customer, card)
    first, second = (refund_requested(ids, paid, name, amount=1200) for name in ("r1", "r2"))
    outcomes: dict[str, dict[str, Any]] = {}
    holder = engine.connect()
    transaction = holder.begin()
    holder.execute(
        text("SELECT 1 FROM charges WHERE event_id = :e FOR UPDATE"), {"e": paid.event_id}
    )
    threads = [
        threading.Thread(
            target=lambda m=msg, owner=owner: outcomes.update(
                {m.event_id: deliveries.deliver(m, owner=owner)}
            )
        )
        for msg, owner in ((first, "host-a:1:task-a"), (second, WORKER_B))
    ]
    for thread in threads:
        thread.start()
    waiting_for_locks(engine, 2)

    # When the lock is let go and they run at once
    transaction.commit()
    holder.close()
    for thread in threads:
        thread.join(timeout=30)

    # Then one refunds 1200; the other sees its pending row and is refused before Stripe
    statuses = sorted((o["status"], o.get("error_code")) for o in outcomes.values())
    assert statuses == [("failed", "refund_exceeds_charge"), ("succeeded", None)]
    [create] = gateway.calls_to("create_refund")
    assert create.params["amount"] == 1200
    assert amount_refunded(rows, paid.event_id) == 1200 == gateway.amount_refunded(paid.charge_id)


def test_a_pending_stripe_refund_is_watched_and_counts_until_it_succeeds(
    ids: Callable[[str], str], deliveries: Deliveries, gateway: FakeGateway, rows: Rows,
    customer: Callable[[str], str], card: Callable[..., str], settings: Settings,
) -> None:
    # Given Stripe holding the next refunds pending
    paid = paid_charge(ids, deliveries, rows, customer, card)
    gateway.hold_refunds()
    msg = refund_requested(ids, paid, amount=1200)

    # When a refund of 1200 is requested
    before = now()
    outcome = deliveries.deliver(msg)

    # Then the event is watched (processing, lease given back, re-read after the poll
    # interval); the row is pending with Stripe's id, and nothing is refunded yet
    assert outcome == {"event_id": msg.event_id, "status": "watching"}
    [refund] = gateway.refunds.values()
    event = rows.event(msg.event_id)
    assert (event["status"], event["recovery_point"]) == ("processing", "refund_pending")
    assert event["locked_by"] is None and event["result"] is None
    assert event["progress"]["refund_id"] == refund.id
    poll = timedelta(seconds=settings.action_poll_seconds)
    assert before + poll <= event["next_attempt_at"] <= now() + poll
    row = refund_row(rows, msg.event_id)
    assert (row["status"], row["stripe_refund_id"]) == ("pending", refund.id)
    assert amount_refunded(rows, paid.event_id) == 0

    # And the pending 1200 counts: 1000 more is refused before Stripe
    over = deliveries.deliver(refund_requested(ids, paid, "over", amount=1000))
    assert over["error_code"] == "refund_exceeds_charge"
    assert len(gateway.calls_to("create_refund")) == 1

    # When Stripe finishes it and the sweeper re-drives the event
    gateway.settle_refund(refund.id, "succeeded")
    deliveries.redrive(msg.event_id)

    # Then it is read again (not created again) and succeeds; the charge shows 1200
    assert [c.params for c in gateway.calls_to("retrieve_refund")] == [{"refund_id": refund.id}]
    assert len(gateway.calls_to("create_refund")) == 1
    event = rows.event(msg.event_id)
    assert event["status"] == "succeeded"
    assert event["result"]["amount_refunded"] == 1200 and event["result"]["status"] == "succeeded"
    assert refund_row(rows, msg.event_id)["status"] == "succeeded"
    assert amount_refunded(rows, paid.event_id) == 1200


@pytest.mark.parametrize("ending", ["failed", "canceled"])
def test_a_pending_refund_that_fails_on_stripe_fails_the_event_and_frees_its_amount(
    ending: str, ids: Callable[[str], str], deliveries: Deliveries, gateway: FakeGateway,
    rows: Rows, customer: Callable[[str], str], card: Callable[..., str],
) -> None:
    # Given a refund Stripe holds pending
    paid = paid_charge(ids, deliveries, rows, customer, card)
    gateway.hold_refunds()
    msg = refund_requested(ids, paid)
    assert deliveries.deliver(msg)["status"] == "watching"
    [refund] = gateway.refunds.values()

    # When it ends failed (the card expired) or canceled and the event is re-driven
    gateway.settle_refund(refund.id, ending, "expired_or_canceled_card")
    outcome = deliveries.redrive(msg.event_id)

    # Then the event fails refund_failed; its row keeps Stripe's status and reason
    assert outcome["status"] == "failed" and outcome["error_code"] == "refund_failed"
    event = rows.event(msg.event_id)
    assert event["result"]["status"] == ending
    assert event["result"]["failure_reason"] == "expired_or_canceled_card"
    row = refund_row(rows, msg.event_id)
    assert (row["status"], row["failure_reason"]) == (ending, "expired_or_canceled_card")
    assert amount_refunded(rows, paid.event_id) == 0

    # And the whole charge can be refunded again
    gateway.hold_refunds(False)
    again = deliveries.deliver(refund_requested(ids, paid, "again"))
    assert again["status"] == "succeeded"
    assert amount_refunded(rows, paid.event_id) == CHARGED


def test_a_forced_replay_of_a_failed_refund_is_refused(
    ids: Callable[[str], str], deliveries: Deliveries, gateway: FakeGateway, rows: Rows,
    customer: Callable[[str], str], card: Callable[..., str], engine: Engine, settings: Settings,
) -> None:
    # Given a refund that failed (more asked than the charge)
    paid = paid_charge(ids, deliveries, rows, customer, card)
    msg = refund_requested(ids, paid, amount=CHARGED + 1)
    assert deliveries.deliver(msg)["error_code"] == "refund_exceeds_charge"

    # When an operator forces a replay of it
    stripe = cast(StripeGateway, gateway)
    checked = ask_stripe(engine, lambda: stripe, msg.event_id)
    with engine.begin() as conn:
        outcome = replay(
            conn, msg.event_id, force=True, queue=settings.queue, publish=lambda _: None,
            grace_seconds=settings.redrive_after_seconds, operator="ops-test",
            reason="a test forces it", checked=checked,
        )  # fmt: skip

    # Then it is refused, pointing at a new refund_requested; the event stays failed
    assert isinstance(outcome, Refused)
    assert "publish a new refund_requested" in outcome.reason
    event = rows.event(msg.event_id)
    assert (event["status"], event["generation"]) == ("failed", 0)
