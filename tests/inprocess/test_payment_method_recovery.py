"""payment_method_received after `started`, recovery point by recovery point: a crash or a
lost answer anywhere resumes without a second attach, and Stripe and Postgres agree."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from core.errors import OutcomeUnknown
from tasks.messages import PaymentMethodReceived
from tests.inprocess._support import Deliveries, Rows
from tests.inprocess.fake_gateway import VISA, FakeGateway


def pm_received(
    ids: Callable[[str], str], payment_method: str, event: str = "pm"
) -> PaymentMethodReceived:
    return PaymentMethodReceived(
        event_id=ids(event), user_id=ids("user"), payment_method=payment_method
    )


def test_pm_attaching_resumes_after_a_lost_response_with_the_same_key(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
) -> None:
    # Given an attach that reached Stripe but whose response was lost
    customer_id = customer(ids("user"))
    msg = pm_received(ids, "pm_card_visa")
    gateway.fail_next("attach_payment_method", OutcomeUnknown("no answer"), after_effect=True)
    deliveries.deliver(msg)
    waiting = rows.event(msg.event_id)
    assert (waiting["status"], waiting["recovery_point"]) == ("processing", "pm_attaching")
    assert waiting["transient_failures"] == 1
    assert rows.cards(msg.user_id) == []

    # When the event is delivered again
    deliveries.deliver(msg)

    # Then the attach is repeated under the same key: Stripe answers the same attached copy
    # (a second attach of pm_card_visa would attach a second one), recorded once
    attaches = gateway.calls_to("attach_payment_method")
    assert [a.key for a in attaches] == [f"pw:{msg.event_id}:attach"] * 2
    [pm] = gateway.payment_methods_of(customer_id)
    event = rows.event(msg.event_id)
    assert event["status"] == "succeeded" and event["result"]["card_id"] == pm
    assert [c["stripe_card_id"] for c in rows.cards(msg.user_id)] == [pm]


def test_pm_attaching_after_the_key_expired_reads_the_payment_method_and_attaches_nothing(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
) -> None:
    # Given an attach that reached Stripe, its response lost, and a day gone by
    customer_id = customer(ids("user"))
    pm = gateway.add_payment_method(VISA)
    msg = pm_received(ids, pm)
    gateway.fail_next("attach_payment_method", OutcomeUnknown("no answer"), after_effect=True)
    deliveries.deliver(msg)
    rows.age_pending_write(msg.event_id, hours=25)
    gateway.forget_idempotency_keys()

    # When the event is delivered again
    deliveries.deliver(msg)

    # Then the PaymentMethod, read, is attached to our customer: recorded, not attached
    # again (no metadata search: the PaymentMethod names its customer)
    assert gateway.methods_called() == [
        "retrieve_payment_method", "attach_payment_method", "retrieve_payment_method",
        "set_default_card",
    ]  # fmt: skip
    event = rows.event(msg.event_id)
    assert event["status"] == "succeeded" and event["result"]["card_id"] == pm
    assert [c["stripe_card_id"] for c in rows.cards(msg.user_id)] == [pm]
    assert gateway.payment_methods_of(customer_id) == [pm]


def test_pm_attaching_after_the_key_expired_attaches_when_nothing_reached_stripe(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
) -> None:
    # Given an attach that never reached Stripe, retried a day later
    customer_id = customer(ids("user"))
    pm = gateway.add_payment_method(VISA)
    msg = pm_received(ids, pm)
    gateway.fail_next("attach_payment_method", OutcomeUnknown("no answer"))
    deliveries.deliver(msg)
    rows.age_pending_write(msg.event_id, hours=25)

    # When the event is delivered again
    deliveries.deliver(msg)

    # Then the read shows it unattached, so it is attached now
    assert gateway.methods_called()[2:4] == ["retrieve_payment_method", "attach_payment_method"]
    assert gateway.payment_methods_of(customer_id) == [pm]
    assert rows.event(msg.event_id)["result"]["card_id"] == pm


def test_pm_attaching_records_a_payment_method_the_app_attached_meanwhile(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
) -> None:
    # Given an event at pm_attaching whose PaymentMethod the app's SetupIntent has attached
    # to our customer since it was read
    user = ids("user")
    customer_id = customer(user)
    pm = gateway.add_payment_method(VISA, customer_id=customer_id)
    msg = pm_received(ids, pm)
    details = dataclasses.asdict(gateway.payment_methods[pm].details)
    claim = deliveries.claim_at(msg, "pm_attaching", {"customer_id": customer_id, "card": details})

    # When it runs
    deliveries.run(msg, claim)

    # Then Stripe refuses the attach, the read shows it is ours, and it is recorded
    assert gateway.methods_called() == [
        "attach_payment_method", "retrieve_payment_method", "set_default_card",
    ]  # fmt: skip
    event = rows.event(msg.event_id)
    assert event["status"] == "succeeded" and event["result"]["card_id"] == pm
    assert [c["stripe_card_id"] for c in rows.cards(user)] == [pm]


def test_pm_attaching_fails_when_another_customer_took_the_payment_method_meanwhile(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
) -> None:
    # Given an event at pm_attaching whose PaymentMethod was attached to another customer
    # since it was read
    user = ids("user")
    customer_id = customer(user)
    stranger = gateway.add_customer("eve@example.com")
    pm = gateway.add_payment_method(VISA, customer_id=stranger)
    msg = pm_received(ids, pm)
    details = dataclasses.asdict(gateway.payment_methods[pm].details)
    claim = deliveries.claim_at(msg, "pm_attaching", {"customer_id": customer_id, "card": details})

    # When it runs
    deliveries.run(msg, claim)

    # Then it fails payment_method_unavailable; the other customer keeps it
    event = rows.event(msg.event_id)
    assert (event["status"], event["error_code"]) == ("failed", "payment_method_unavailable")
    assert gateway.payment_methods_of(stranger) == [pm]
    assert rows.cards(user) == []


def test_pm_discarding_detaches_ours_when_another_event_recorded_the_card_first(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
) -> None:
    # Given event A's attach of a Visa reached Stripe but its response was lost, and
    # meanwhile event B attached and recorded another PaymentMethod of the same Visa
    customer_id = customer(ids("user"))
    a = pm_received(ids, gateway.add_payment_method(VISA), "pm-a")
    b = pm_received(ids, gateway.add_payment_method(VISA), "pm-b")
    gateway.fail_next("attach_payment_method", OutcomeUnknown("no answer"), after_effect=True)
    deliveries.deliver(a)
    deliveries.deliver(b)
    assert gateway.payment_methods_of(customer_id) == [a.payment_method, b.payment_method]

    # When A is delivered again
    deliveries.deliver(a)

    # Then A's PaymentMethod cannot be recorded (the unique index on the fingerprint): it is
    # detached from Stripe and A adopts B's card as a duplicate
    [detach] = gateway.calls_to("detach_payment_method")
    assert detach.params == {"payment_method": a.payment_method}
    assert gateway.payment_methods_of(customer_id) == [b.payment_method]
    event = rows.event(a.event_id)
    assert (event["status"], event["recovery_point"]) == ("succeeded", "pm_discarding")
    assert event["progress"]["discard_card_id"] == a.payment_method
    assert event["result"]["card_id"] == b.payment_method
    assert event["result"]["duplicate"] is True
    assert event["result"]["deleted_duplicate_card_id"] == a.payment_method
    assert [c["stripe_card_id"] for c in rows.cards(a.user_id)] == [b.payment_method]
    assert gateway.customers[customer_id].default_payment_method == b.payment_method


def test_pm_discarding_resumes_when_the_detach_happened_but_its_answer_was_lost(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
    pm_card: Callable[..., str],
) -> None:
    # Given an event at pm_discarding whose detach reached Stripe, its answer lost
    user = ids("user")
    customer_id = customer(user)
    winner = pm_card(user, customer_id, VISA)
    ours = gateway.add_payment_method(VISA, customer_id=customer_id)
    msg = pm_received(ids, ours)
    details = dataclasses.asdict(gateway.payment_methods[ours].details)
    progress = {"customer_id": customer_id, "card": details, "discard_card_id": ours}
    gateway.fail_next("detach_payment_method", OutcomeUnknown("no answer"), after_effect=True)
    deliveries.run(msg, deliveries.claim_at(msg, "pm_discarding", progress))
    assert rows.event(msg.event_id)["recovery_point"] == "pm_discarding"

    # When it is delivered again
    deliveries.deliver(msg)

    # Then Stripe's refusal to detach it twice is read as done, and the winner adopted
    assert gateway.methods_called() == [
        "detach_payment_method", "detach_payment_method", "retrieve_payment_method",
    ]  # fmt: skip
    event = rows.event(msg.event_id)
    assert event["status"] == "succeeded"
    assert (event["result"]["card_id"], event["result"]["duplicate"]) == (winner, True)
    assert gateway.payment_methods_of(customer_id) == [winner]


def test_pm_discarding_fails_when_the_winner_was_removed_meanwhile(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
    card: Callable[..., str],
    remove_card: Callable[..., None],
) -> None:
    # Given an event at pm_discarding whose PaymentMethod lost the race to a card removed
    # since
    user = ids("user")
    customer_id = customer(user)
    winner = card(user, customer_id, VISA)
    remove_card(user, customer_id, winner)
    ours = gateway.add_payment_method(VISA, customer_id=customer_id)
    msg = pm_received(ids, ours)
    details = dataclasses.asdict(gateway.payment_methods[ours].details)
    progress = {"customer_id": customer_id, "card": details, "discard_card_id": ours}

    # When it runs
    deliveries.run(msg, deliveries.claim_at(msg, "pm_discarding", progress))

    # Then ours is detached, and with nothing left to adopt the event fails
    assert gateway.methods_called() == ["detach_payment_method"]
    event = rows.event(msg.event_id)
    assert (event["status"], event["error_code"]) == ("failed", "card_not_found")
    assert gateway.payment_methods_of(customer_id) == []


def test_pm_attached_resumes_the_default_switch_after_a_lost_response(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
) -> None:
    # Given a first card attached and recorded, whose default switch happened on Stripe but
    # lost its response
    customer_id = customer(ids("user"))
    pm = gateway.add_payment_method(VISA)
    msg = pm_received(ids, pm)
    gateway.fail_next("set_default_card", OutcomeUnknown("no answer"), after_effect=True)
    deliveries.deliver(msg)
    waiting = rows.event(msg.event_id)
    assert (waiting["status"], waiting["recovery_point"]) == ("processing", "pm_attached")

    # When the event is delivered again
    deliveries.deliver(msg)

    # Then only the default switch is repeated, under the same key
    assert gateway.methods_called()[-2:] == ["set_default_card", "set_default_card"]
    assert {c.key for c in gateway.calls_to("set_default_card")} == {f"pw:{msg.event_id}:default"}
    assert len(gateway.calls_to("attach_payment_method")) == 1
    event = rows.event(msg.event_id)
    assert event["status"] == "succeeded" and event["result"]["is_default"] is True
    assert gateway.customers[customer_id].default_payment_method == pm
    assert rows.default_card(msg.user_id) == pm


def test_pm_attaching_of_a_payment_method_another_event_recorded_meanwhile_detaches_nothing(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
) -> None:
    # Given two events of one PaymentMethod, both read while it was unattached: A attached
    # and recorded it; B is at pm_attaching
    user = ids("user")
    customer_id = customer(user)
    pm = gateway.add_payment_method(VISA)
    a, b = pm_received(ids, pm, "pm-a"), pm_received(ids, pm, "pm-b")
    details = dataclasses.asdict(gateway.payment_methods[pm].details)
    claim = deliveries.claim_at(b, "pm_attaching", {"customer_id": customer_id, "card": details})
    deliveries.deliver(a)
    gateway.calls.clear()

    # When B runs
    deliveries.run(b, claim)

    # Then Stripe refuses B's attach, the read shows the PaymentMethod is ours, and as A
    # recorded this very PaymentMethod, B is its duplicate: nothing is detached
    assert gateway.methods_called() == ["attach_payment_method", "retrieve_payment_method"]
    assert gateway.payment_methods_of(customer_id) == [pm]
    event = rows.event(b.event_id)
    assert event["status"] == "succeeded"
    assert (event["result"]["card_id"], event["result"]["duplicate"]) == (pm, True)
    assert "deleted_duplicate_card_id" not in event["result"]
    assert [c["stripe_card_id"] for c in rows.cards(user)] == [pm]
    assert rows.default_card(user) == pm
