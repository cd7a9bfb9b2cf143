"""default_card_changed and card_removed, recovery point by recovery point: Stripe first,
then Postgres mirrors what Stripe says."""

from __future__ import annotations

from collections.abc import Callable

from core.errors import OutcomeUnknown
from db.ledger import now
from tasks.messages import CardRemoved, DefaultCardChanged
from tests.inprocess._support import Deliveries, Rows, assert_scheduled
from tests.inprocess.fake_gateway import MASTERCARD, VISA, FakeGateway

Wallet = tuple[str, str, str, str]


def wallet(
    ids: Callable[[str], str], customer: Callable[[str], str], card: Callable[..., str]
) -> Wallet:
    """A user with a Visa (the default) and a Mastercard: (user, customer, visa, mastercard)."""
    user = ids("user")
    customer_id = customer(user)
    return user, customer_id, card(user, customer_id, VISA), card(user, customer_id, MASTERCARD)


# ---- default_card_changed -------------------------------------------------------------------


def test_started_checks_the_card_then_sets_the_default_on_stripe_and_in_postgres(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
    card: Callable[..., str],
) -> None:
    # Given a user whose Visa is the default
    user, customer_id, visa, mastercard = wallet(ids, customer, card)
    msg = DefaultCardChanged(event_id=ids("default"), user_id=user, card_id=mastercard)

    # When default_card_changed names the Mastercard
    deliveries.deliver(msg)

    # Then Stripe is told under the event's key, and Postgres follows
    [call] = gateway.calls
    assert (call.method, call.key) == ("set_default_card", f"pw:{msg.event_id}:default")
    assert call.params == {"customer_id": customer_id, "card_id": mastercard}
    assert gateway.customers[customer_id].default_card == mastercard
    assert rows.default_card(user) == mastercard
    event = rows.event(msg.event_id)
    assert event["status"] == "succeeded"
    assert event["recovery_point"] == "default_setting"
    assert event["progress"]["customer_id"] == customer_id
    assert event["result"] == {"card_id": mastercard, "previous_default_card_id": visa}


def test_started_waits_for_a_card_not_recorded_yet(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
    card: Callable[..., str],
) -> None:
    # Given a user whose new card's card_token_received has not been processed yet
    user, _, visa, _ = wallet(ids, customer, card)
    msg = DefaultCardChanged(event_id=ids("default"), user_id=user, card_id="card_notyetknown")

    # When default_card_changed names that card
    before = now()
    outcome = deliveries.deliver(msg)

    # Then it waits for the card without spending budget; nothing changes
    assert outcome["status"] == "retry_scheduled"
    assert gateway.calls == []
    event = rows.event(msg.event_id)
    assert (event["status"], event["recovery_point"]) == ("processing", "started")
    assert event["transient_failures"] == 0
    assert event["last_error"].startswith("card_not_found: card 'card_notyetknown'")
    assert_scheduled(event, before, 0.5, 1.0)
    assert rows.default_card(user) == visa


def test_default_setting_resumes_after_a_transient_error(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
    card: Callable[..., str],
) -> None:
    # Given a default switch that failed before reaching Stripe
    user, customer_id, visa, mastercard = wallet(ids, customer, card)
    msg = DefaultCardChanged(event_id=ids("default"), user_id=user, card_id=mastercard)
    gateway.fail_next("set_default_card", OutcomeUnknown("Stripe answered 503"))
    deliveries.deliver(msg)
    waiting = rows.event(msg.event_id)
    assert (waiting["status"], waiting["recovery_point"]) == ("processing", "default_setting")
    assert waiting["transient_failures"] == 1
    assert gateway.customers[customer_id].default_card == visa
    assert rows.default_card(user) == visa

    # When the event is delivered again
    deliveries.deliver(msg)

    # Then it resumes at default_setting (the card is not checked again) with the same key
    assert gateway.methods_called() == ["set_default_card", "set_default_card"]
    assert {c.key for c in gateway.calls} == {f"pw:{msg.event_id}:default"}
    assert gateway.customers[customer_id].default_card == mastercard
    assert rows.default_card(user) == mastercard
    assert rows.event(msg.event_id)["status"] == "succeeded"


def test_default_setting_fails_when_the_card_is_gone_on_stripe(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
    card: Callable[..., str],
) -> None:
    # Given an event at default_setting whose card was deleted on Stripe (by the dashboard)
    user, customer_id, visa, mastercard = wallet(ids, customer, card)
    gateway.remove_card(customer_id, mastercard)
    msg = DefaultCardChanged(event_id=ids("default"), user_id=user, card_id=mastercard)
    claim = deliveries.claim_at(msg, "default_setting", {"customer_id": customer_id})

    # When it runs
    deliveries.run(msg, claim)

    # Then Stripe's "no such source" is a final card_not_found; the default stays
    assert gateway.methods_called() == ["set_default_card"]
    event = rows.event(msg.event_id)
    assert event["status"] == "failed"
    assert event["error_code"] == "card_not_found"
    assert event["transient_failures"] == 0
    assert rows.default_card(user) == visa


# ---- card_removed -----------------------------------------------------------------------------


def test_started_removes_a_card_that_is_not_the_default(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
    card: Callable[..., str],
) -> None:
    # Given a user whose Visa is the default
    user, customer_id, visa, mastercard = wallet(ids, customer, card)
    msg = CardRemoved(event_id=ids("remove"), user_id=user, card_id=mastercard)

    # When card_removed names the Mastercard
    deliveries.deliver(msg)

    # Then it is deleted on Stripe and marked removed; the Visa stays the default
    assert gateway.methods_called() == ["delete_card", "default_card"]
    assert gateway.customers[customer_id].cards == [visa]
    assert rows.card(mastercard)["removed_at"] is not None
    assert rows.default_card(user) == visa
    event = rows.event(msg.event_id)
    assert (event["status"], event["recovery_point"]) == ("succeeded", "card_removing")
    assert event["result"] == {
        "card_id": mastercard, "already_removed": False, "default_card_id": visa,
    }  # fmt: skip


def test_started_with_a_card_already_removed_succeeds_without_stripe(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
    card: Callable[..., str],
    remove_card: Callable[..., None],
) -> None:
    # Given a card removed by an earlier event
    user, customer_id, _, mastercard = wallet(ids, customer, card)
    remove_card(user, customer_id, mastercard)
    removed_at = rows.card(mastercard)["removed_at"]
    msg = CardRemoved(event_id=ids("remove-again"), user_id=user, card_id=mastercard)

    # When card_removed names it again
    deliveries.deliver(msg)

    # Then it succeeds at once: Stripe is not asked, the removal time is kept
    assert gateway.calls == []
    event = rows.event(msg.event_id)
    assert (event["status"], event["recovery_point"]) == ("succeeded", "started")
    assert event["result"] == {"card_id": mastercard, "already_removed": True}
    assert rows.card(mastercard)["removed_at"] == removed_at


def test_card_removing_mirrors_the_default_stripe_chose(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
    card: Callable[..., str],
) -> None:
    # Given a user whose Visa is the default, and a Mastercard
    user, customer_id, visa, mastercard = wallet(ids, customer, card)
    msg = CardRemoved(event_id=ids("remove"), user_id=user, card_id=visa)

    # When card_removed names the default Visa
    deliveries.deliver(msg)

    # Then Stripe promotes the Mastercard, and Postgres mirrors it
    assert gateway.customers[customer_id].default_card == mastercard
    removed = rows.card(visa)
    assert removed["removed_at"] is not None and removed["is_default"] is False
    assert rows.default_card(user) == mastercard
    event = rows.event(msg.event_id)
    assert (event["status"], event["recovery_point"]) == ("succeeded", "card_removing")
    assert event["result"]["default_card_id"] == mastercard


def test_card_removing_resumes_after_a_lost_response(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
    card: Callable[..., str],
) -> None:
    # Given a delete that reached Stripe but whose response was lost
    user, customer_id, visa, mastercard = wallet(ids, customer, card)
    assert gateway.customers[customer_id].default_card == visa
    msg = CardRemoved(event_id=ids("remove"), user_id=user, card_id=visa)
    gateway.fail_next("delete_card", OutcomeUnknown("no answer"), after_effect=True)
    deliveries.deliver(msg)
    waiting = rows.event(msg.event_id)
    assert (waiting["status"], waiting["recovery_point"]) == ("processing", "card_removing")
    assert waiting["transient_failures"] == 1
    assert rows.card(visa)["removed_at"] is None

    # When the event is delivered again
    deliveries.deliver(msg)

    # Then Stripe's "no such source" for the repeated delete counts as done, and the new
    # default is mirrored
    assert gateway.methods_called() == ["delete_card", "delete_card", "default_card"]
    assert gateway.customers[customer_id].cards == [mastercard]
    assert rows.card(visa)["removed_at"] is not None
    assert rows.default_card(user) == mastercard
    event = rows.event(msg.event_id)
    assert event["status"] == "succeeded"
    assert event["result"]["default_card_id"] == mastercard
