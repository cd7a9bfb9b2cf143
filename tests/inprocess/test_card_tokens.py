"""card_token_received, recovery point by recovery point: one card per fingerprint, attached
once on Stripe and recorded once in Postgres, the first card (or the one asked for) the
default on both sides."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from core.errors import OutcomeUnknown
from tasks.messages import CardTokenReceived
from tests.inprocess._support import Deliveries, Rows
from tests.inprocess.fake_gateway import MASTERCARD, VISA, FakeGateway


def token_received(
    ids: Callable[[str], str], token: str, event: str = "card", make_default: bool = False
) -> CardTokenReceived:
    return CardTokenReceived(
        event_id=ids(event), user_id=ids("user"), token=token, make_default=make_default
    )


def test_started_attaches_a_new_card_and_makes_the_first_one_the_default(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
) -> None:
    # Given a registered user without cards, and a token for a Visa
    customer_id = customer(ids("user"))
    msg = token_received(ids, gateway.add_token(VISA))

    # When its card_token_received is delivered
    deliveries.deliver(msg)

    # Then the card is attached under the event's key, recorded, and made the default on
    # Stripe too because it is the user's first
    assert gateway.methods_called() == ["retrieve_token", "attach_card", "set_default_card"]
    attach, default = gateway.calls_to("attach_card")[0], gateway.calls_to("set_default_card")[0]
    assert attach.key == f"pw:{msg.event_id}:attach"
    assert attach.params["metadata"] == {"event_id": msg.event_id, "user_id": msg.user_id}
    assert default.key == f"pw:{msg.event_id}:default"
    [card_id] = gateway.customers[customer_id].cards
    assert gateway.customers[customer_id].default_card == card_id
    event = rows.event(msg.event_id)
    assert event["status"] == "succeeded"
    assert event["recovery_point"] == "card_attached"
    assert event["progress"]["card_id"] == card_id
    assert event["progress"]["customer_id"] == customer_id
    assert event["progress"]["first"] is True
    assert event["progress"]["write_started_at"] is not None
    assert event["sealed_token"] is None
    fingerprint = gateway.cards[card_id].details.fingerprint
    assert event["result"] == {
        "card_id": card_id, "duplicate": False, "fingerprint": fingerprint, "brand": "Visa",
        "last4": "4242", "is_default": True,
    }  # fmt: skip
    [row] = rows.cards(msg.user_id)
    assert (row["stripe_card_id"], row["is_default"], row["event_id"]) == (
        card_id, True, msg.event_id,
    )  # fmt: skip


def test_started_with_a_known_fingerprint_is_a_duplicate_and_attaches_nothing(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
    card: Callable[..., str],
) -> None:
    # Given a user with a Visa, and a new token for the same Visa
    user = ids("user")
    known = card(user, customer(user), VISA)
    msg = token_received(ids, gateway.add_token(VISA))

    # When the token is delivered
    deliveries.deliver(msg)

    # Then only the token is read: the known card is the result, nothing is attached
    assert gateway.methods_called() == ["retrieve_token"]
    event = rows.event(msg.event_id)
    assert event["status"] == "succeeded"
    assert event["recovery_point"] == "started"
    assert event["result"]["card_id"] == known
    assert event["result"]["duplicate"] is True
    assert [c["stripe_card_id"] for c in rows.cards(user)] == [known]


def test_started_with_a_known_fingerprint_and_make_default_switches_the_default(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
    card: Callable[..., str],
) -> None:
    # Given a user with a Visa (default) and a Mastercard, and a new token for the
    # Mastercard that asks for it to be the default
    user = ids("user")
    customer_id = customer(user)
    visa, mastercard = card(user, customer_id, VISA), card(user, customer_id, MASTERCARD)
    msg = token_received(ids, gateway.add_token(MASTERCARD), make_default=True)

    # When the token is delivered
    deliveries.deliver(msg)

    # Then the known Mastercard becomes the default on both sides; nothing is attached
    assert gateway.methods_called() == ["retrieve_token", "set_default_card"]
    assert gateway.customers[customer_id].default_card == mastercard
    assert rows.default_card(user) == mastercard
    assert not rows.card(visa)["is_default"]
    event = rows.event(msg.event_id)
    assert (event["status"], event["recovery_point"]) == ("succeeded", "card_attached")
    assert event["result"]["duplicate"] is True and event["result"]["is_default"] is True


def test_card_attaching_resumes_after_a_lost_response_with_the_same_key(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
) -> None:
    # Given an attach that reached Stripe but whose response was lost
    customer_id = customer(ids("user"))
    msg = token_received(ids, gateway.add_token(VISA))
    gateway.fail_next("attach_card", OutcomeUnknown("no answer"), after_effect=True)
    deliveries.deliver(msg)
    waiting = rows.event(msg.event_id)
    assert (waiting["status"], waiting["recovery_point"]) == ("processing", "card_attaching")
    assert waiting["transient_failures"] == 1
    assert waiting["sealed_token"] is not None  # needed to repeat the attach
    assert rows.cards(msg.user_id) == []

    # When the event is delivered again
    deliveries.deliver(msg)

    # Then the attach is repeated under the same key: Stripe answers the same card (a used
    # token would be refused otherwise), which is recorded once
    attaches = gateway.calls_to("attach_card")
    assert [a.key for a in attaches] == [f"pw:{msg.event_id}:attach"] * 2
    [card_id] = gateway.customers[customer_id].cards
    event = rows.event(msg.event_id)
    assert event["status"] == "succeeded"
    assert event["result"]["card_id"] == card_id
    assert event["sealed_token"] is None
    assert [c["stripe_card_id"] for c in rows.cards(msg.user_id)] == [card_id]


def test_card_discarding_deletes_our_copy_when_another_event_recorded_the_card_first(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
) -> None:
    # Given event A's attach of a Visa reached Stripe but its response was lost, and
    # meanwhile event B attached and recorded another token of the same Visa
    customer_id = customer(ids("user"))
    a = token_received(ids, gateway.add_token(VISA), "card-a")
    b = token_received(ids, gateway.add_token(VISA), "card-b")
    gateway.fail_next("attach_card", OutcomeUnknown("no answer"), after_effect=True)
    deliveries.deliver(a)
    deliveries.deliver(b)
    ours, winner = gateway.customers[customer_id].cards
    assert rows.event(b.event_id)["result"]["card_id"] == winner

    # When A is delivered again
    deliveries.deliver(a)

    # Then A's card cannot be recorded (same fingerprint): it is deleted from Stripe and
    # A adopts B's card as a duplicate
    assert gateway.calls_to("delete_card")[0].params == {
        "customer_id": customer_id, "card_id": ours,
    }  # fmt: skip
    assert gateway.customers[customer_id].cards == [winner]
    event = rows.event(a.event_id)
    assert event["status"] == "succeeded"
    assert event["recovery_point"] == "card_discarding"
    assert event["progress"]["discard_card_id"] == ours
    assert event["sealed_token"] is None
    assert event["result"]["card_id"] == winner
    assert event["result"]["duplicate"] is True
    assert event["result"]["deleted_duplicate_card_id"] == ours
    assert [c["stripe_card_id"] for c in rows.cards(a.user_id)] == [winner]


def test_card_discarding_fails_when_the_winner_was_removed_meanwhile(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
    card: Callable[..., str],
    remove_card: Callable[..., None],
) -> None:
    # Given an event at card_discarding whose copy of a Visa lost the race to a card that
    # has been removed since
    user = ids("user")
    customer_id = customer(user)
    winner = card(user, customer_id, VISA)
    remove_card(user, customer_id, winner)
    msg = token_received(ids, gateway.add_token(VISA))
    ours = gateway.add_card(customer_id, VISA, event_id=msg.event_id)
    details = dataclasses.asdict(gateway.cards[ours].details)
    progress = {"customer_id": customer_id, "card": details, "discard_card_id": ours}
    claim = deliveries.claim_at(msg, "card_discarding", progress)

    # When it runs
    deliveries.run(msg, claim)

    # Then our copy is deleted, and with nothing left to adopt the event fails
    assert gateway.methods_called() == ["delete_card"]
    assert gateway.customers[customer_id].cards == []
    event = rows.event(msg.event_id)
    assert event["status"] == "failed"
    assert event["error_code"] == "card_not_found"
    assert event["recovery_point"] == "card_discarding"
    assert event["transient_failures"] == 0 and event["next_attempt_at"] is None
    assert [c["removed_at"] is not None for c in rows.cards(user)] == [True]


def test_card_attached_makes_a_second_card_the_default_when_asked(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
    card: Callable[..., str],
) -> None:
    # Given a user whose Visa is the default, and a Mastercard token with make_default
    user = ids("user")
    customer_id = customer(user)
    visa = card(user, customer_id, VISA)
    msg = token_received(ids, gateway.add_token(MASTERCARD), make_default=True)

    # When the token is delivered
    deliveries.deliver(msg)

    # Then the Mastercard is attached and becomes the default on Stripe and in Postgres
    assert gateway.methods_called() == ["retrieve_token", "attach_card", "set_default_card"]
    mastercard = gateway.calls_to("set_default_card")[0].params["card_id"]
    assert gateway.customers[customer_id].default_card == mastercard
    assert rows.default_card(user) == mastercard
    assert not rows.card(visa)["is_default"]
    event = rows.event(msg.event_id)
    assert (event["status"], event["recovery_point"]) == ("succeeded", "card_attached")
    assert event["progress"]["first"] is False
    assert event["result"]["is_default"] is True


def test_card_attached_leaves_the_default_alone_for_a_second_card(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
    card: Callable[..., str],
) -> None:
    # Given a user whose Visa is the default, and a Mastercard token without make_default
    user = ids("user")
    customer_id = customer(user)
    visa = card(user, customer_id, VISA)
    msg = token_received(ids, gateway.add_token(MASTERCARD))

    # When the token is delivered
    deliveries.deliver(msg)

    # Then the Mastercard is attached, and the Visa stays the default on both sides
    assert gateway.methods_called() == ["retrieve_token", "attach_card"]
    assert gateway.customers[customer_id].default_card == visa
    assert rows.default_card(user) == visa
    event = rows.event(msg.event_id)
    assert (event["status"], event["recovery_point"]) == ("succeeded", "card_attached")
    assert event["result"]["is_default"] is False


def test_card_attached_resumes_the_default_switch_after_a_lost_response(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
) -> None:
    # Given a first card attached and recorded, whose default switch on Stripe happened
    # but lost its response
    customer_id = customer(ids("user"))
    msg = token_received(ids, gateway.add_token(VISA))
    gateway.fail_next("set_default_card", OutcomeUnknown("no answer"), after_effect=True)
    deliveries.deliver(msg)
    waiting = rows.event(msg.event_id)
    assert (waiting["status"], waiting["recovery_point"]) == ("processing", "card_attached")
    assert waiting["transient_failures"] == 1
    assert waiting["sealed_token"] is None  # the token is never needed again

    # When the event is delivered again
    deliveries.deliver(msg)

    # Then only the default switch is repeated, under the same key
    assert gateway.methods_called() == [
        "retrieve_token", "attach_card", "set_default_card", "set_default_card",
    ]  # fmt: skip
    assert {c.key for c in gateway.calls_to("set_default_card")} == {f"pw:{msg.event_id}:default"}
    [card_id] = gateway.customers[customer_id].cards
    event = rows.event(msg.event_id)
    assert event["status"] == "succeeded"
    assert event["result"]["card_id"] == card_id and event["result"]["is_default"] is True
    assert rows.default_card(msg.user_id) == card_id


def test_card_attaching_after_the_key_expired_finds_the_card_by_metadata(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
) -> None:
    # Given an attach that reached Stripe, its response lost, and a day gone by: Stripe has
    # forgotten the key (and the token, used once, cannot be attached again)
    customer_id = customer(ids("user"))
    msg = token_received(ids, gateway.add_token(VISA))
    gateway.fail_next("attach_card", OutcomeUnknown("no answer"), after_effect=True)
    deliveries.deliver(msg)
    rows.age_pending_write(msg.event_id, hours=25)
    gateway.forget_idempotency_keys()

    # When the event is delivered again
    deliveries.deliver(msg)

    # Then the card is found by the event's metadata and recorded, not attached again
    assert gateway.methods_called() == [
        "retrieve_token", "attach_card", "find_card", "set_default_card",
    ]  # fmt: skip
    [find] = gateway.calls_to("find_card")
    assert find.params == {"customer_id": customer_id, "event_id": msg.event_id, "generation": 0}
    [card_id] = gateway.customers[customer_id].cards
    event = rows.event(msg.event_id)
    assert event["status"] == "succeeded" and event["result"]["card_id"] == card_id
    assert [c["stripe_card_id"] for c in rows.cards(msg.user_id)] == [card_id]
