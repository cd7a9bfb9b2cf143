"""payment_method_received at `started`: one card per fingerprint over both kinds (a token's
card and a PaymentMethod of the same number are one card), attached once on Stripe and
recorded once in Postgres, the first card (or the one asked for) the default on both sides.
The recovery points after `started` are in test_payment_method_recovery.py."""

from __future__ import annotations

from collections.abc import Callable

from tasks.messages import CardTokenReceived, PaymentMethodReceived
from tests.inprocess._support import Deliveries, Rows
from tests.inprocess.fake_gateway import MASTERCARD, VISA, FakeGateway

DECLINED_AT_ATTACH = "4000000000000002"  # pm_card_chargeDeclined's number


def pm_received(
    ids: Callable[[str], str], payment_method: str, event: str = "pm", make_default: bool = False
) -> PaymentMethodReceived:
    return PaymentMethodReceived(
        event_id=ids(event), user_id=ids("user"), payment_method=payment_method,
        make_default=make_default,
    )  # fmt: skip


def test_started_attaches_a_new_payment_method_and_makes_the_first_one_the_default(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
) -> None:
    # Given a registered user without cards, and a PaymentMethod of a Visa from stripe.js
    customer_id = customer(ids("user"))
    pm = gateway.add_payment_method(VISA)
    msg = pm_received(ids, pm)

    # When its payment_method_received is delivered
    outcome = deliveries.deliver(msg)

    # Then it is attached under the event's key, recorded as a PaymentMethod, and made the
    # invoice default on Stripe because it is the user's first card
    assert outcome["status"] == "succeeded"
    assert gateway.methods_called() == [
        "retrieve_payment_method", "attach_payment_method", "set_default_card",
    ]  # fmt: skip
    [attach] = gateway.calls_to("attach_payment_method")
    [default] = gateway.calls_to("set_default_card")
    assert attach.key == f"pw:{msg.event_id}:attach"
    assert attach.params == {"customer_id": customer_id, "payment_method": pm}
    assert default.key == f"pw:{msg.event_id}:default"
    assert gateway.payment_methods_of(customer_id) == [pm]
    assert gateway.customers[customer_id].default_payment_method == pm
    event = rows.event(msg.event_id)
    assert (event["status"], event["recovery_point"]) == ("succeeded", "pm_attached")
    assert event["progress"]["write_started_at"] is not None
    fingerprint = gateway.payment_methods[pm].details.fingerprint
    assert event["result"] == {
        "card_id": pm, "duplicate": False, "fingerprint": fingerprint, "brand": "Visa",
        "last4": "4242", "is_default": True, "kind": "payment_method",
    }  # fmt: skip
    [row] = rows.cards(msg.user_id)
    assert (row["stripe_card_id"], row["kind"], row["is_default"], row["event_id"]) == (
        pm, "payment_method", True, msg.event_id,
    )  # fmt: skip


def test_started_with_a_test_id_records_the_payment_method_stripe_attached(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
) -> None:
    # Given Stripe's test id pm_card_visa, which Stripe copies into a new pm_ on every use
    customer_id = customer(ids("user"))
    msg = pm_received(ids, "pm_card_visa")

    # When it is delivered
    deliveries.deliver(msg)

    # Then the copy Stripe attached is the one recorded and made the default
    [attached] = gateway.payment_methods_of(customer_id)
    assert attached.startswith("pm_") and attached != "pm_card_visa"
    assert rows.event(msg.event_id)["result"]["card_id"] == attached
    assert rows.default_card(msg.user_id) == attached
    assert gateway.customers[customer_id].default_payment_method == attached


def test_started_with_the_card_of_a_known_token_is_a_duplicate_and_attaches_nothing(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
    card: Callable[..., str],
) -> None:
    # Given a user with a Visa added from a token, and a PaymentMethod of the same Visa
    user = ids("user")
    customer_id = customer(user)
    known = card(user, customer_id, VISA)
    msg = pm_received(ids, gateway.add_payment_method(VISA))

    # When the PaymentMethod is delivered
    deliveries.deliver(msg)

    # Then only the PaymentMethod is read: the token's card is the result, nothing attached
    assert gateway.methods_called() == ["retrieve_payment_method"]
    assert gateway.payment_methods_of(customer_id) == []
    event = rows.event(msg.event_id)
    assert (event["status"], event["recovery_point"]) == ("succeeded", "started")
    assert event["result"]["card_id"] == known
    assert event["result"]["duplicate"] is True
    assert event["result"]["kind"] == "source"
    assert [c["stripe_card_id"] for c in rows.cards(user)] == [known]


def test_a_token_of_a_known_payment_method_card_is_a_duplicate(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
    pm_card: Callable[..., str],
) -> None:
    # Given a user with a Visa added as a PaymentMethod, and a token of the same Visa
    user = ids("user")
    customer_id = customer(user)
    known = pm_card(user, customer_id, VISA)
    msg = CardTokenReceived(event_id=ids("tok"), user_id=user, token=gateway.add_token(VISA))

    # When card_token_received is delivered
    deliveries.deliver(msg)

    # Then the PaymentMethod is the result; no card is attached from the token
    assert gateway.methods_called() == ["retrieve_token"]
    assert gateway.customers[customer_id].cards == []
    event = rows.event(msg.event_id)
    assert event["status"] == "succeeded"
    assert (event["result"]["card_id"], event["result"]["duplicate"]) == (known, True)
    assert [c["stripe_card_id"] for c in rows.cards(user)] == [known]


def test_started_with_a_known_card_and_make_default_switches_the_default(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
    pm_card: Callable[..., str],
) -> None:
    # Given a user with a Visa (default) and a Mastercard, both PaymentMethods, and a new
    # PaymentMethod of the Mastercard that asks to be the default
    user = ids("user")
    customer_id = customer(user)
    visa, mastercard = pm_card(user, customer_id, VISA), pm_card(user, customer_id, MASTERCARD)
    msg = pm_received(ids, gateway.add_payment_method(MASTERCARD), make_default=True)

    # When it is delivered
    deliveries.deliver(msg)

    # Then the known Mastercard becomes the default on both sides; nothing is attached
    assert gateway.methods_called() == ["retrieve_payment_method", "set_default_card"]
    assert gateway.customers[customer_id].default_payment_method == mastercard
    assert rows.default_card(user) == mastercard
    assert not rows.card(visa)["is_default"]
    event = rows.event(msg.event_id)
    assert (event["status"], event["recovery_point"]) == ("succeeded", "pm_attached")
    assert event["result"]["duplicate"] is True and event["result"]["is_default"] is True


def test_started_fails_a_payment_method_of_another_customer(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
) -> None:
    # Given a PaymentMethod attached to someone else's customer
    customer(ids("user"))
    stranger = gateway.add_customer("eve@example.com")
    msg = pm_received(ids, gateway.add_payment_method(VISA, customer_id=stranger))

    # When it is delivered for our user
    outcome = deliveries.deliver(msg)

    # Then the event fails at once, nothing is attached or recorded
    assert outcome["status"] == "failed"
    assert gateway.methods_called() == ["retrieve_payment_method"]
    event = rows.event(msg.event_id)
    assert (event["status"], event["error_code"]) == ("failed", "payment_method_unavailable")
    assert event["transient_failures"] == 0
    assert rows.cards(msg.user_id) == []


def test_started_records_a_payment_method_a_setup_intent_attached_without_attaching_it(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
) -> None:
    # Given a SetupIntent the customer confirmed in stripe.js: its PaymentMethod is
    # attached to our customer already
    customer_id = customer(ids("user"))
    seti = gateway.create_setup_intent("k", customer_id=customer_id, usage="off_session",
                                       metadata={})  # fmt: skip
    pm = gateway.add_setup_confirmation(seti.setup_intent_id, VISA)
    gateway.calls.clear()
    msg = pm_received(ids, pm)

    # When its payment_method_received is delivered
    deliveries.deliver(msg)

    # Then it is recorded as it is (no second attach) and made the default
    assert gateway.methods_called() == ["retrieve_payment_method", "set_default_card"]
    assert gateway.payment_methods_of(customer_id) == [pm]
    assert gateway.customers[customer_id].default_payment_method == pm
    event = rows.event(msg.event_id)
    assert (event["status"], event["recovery_point"]) == ("succeeded", "pm_attached")
    assert event["result"]["card_id"] == pm and event["result"]["duplicate"] is False
    assert [c["stripe_card_id"] for c in rows.cards(msg.user_id)] == [pm]


def test_started_detaches_a_setup_intent_payment_method_of_a_known_card(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
    card: Callable[..., str],
) -> None:
    # Given a user with a Visa from a token, and a SetupIntent confirmed with the same Visa
    # (Stripe attached a second copy of the card to the customer)
    user = ids("user")
    customer_id = customer(user)
    known = card(user, customer_id, VISA)
    pm = gateway.add_payment_method(VISA, customer_id=customer_id)
    msg = pm_received(ids, pm)

    # When its payment_method_received is delivered
    deliveries.deliver(msg)

    # Then the copy is detached, so Stripe holds the card once, and the known card is the
    # result
    assert gateway.methods_called() == ["retrieve_payment_method", "detach_payment_method"]
    assert gateway.payment_methods_of(customer_id) == []
    assert gateway.payment_methods[pm].used_up
    event = rows.event(msg.event_id)
    assert (event["status"], event["recovery_point"]) == ("succeeded", "pm_discarding")
    assert event["result"]["card_id"] == known
    assert event["result"]["duplicate"] is True
    assert event["result"]["deleted_duplicate_card_id"] == pm
    assert [c["stripe_card_id"] for c in rows.cards(user)] == [known]


def test_started_with_a_payment_method_recorded_already_detaches_nothing(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
    pm_card: Callable[..., str],
) -> None:
    # Given a user's recorded PaymentMethod, sent again under a new event
    user = ids("user")
    known = pm_card(user, customer(user), VISA)
    msg = pm_received(ids, known)

    # When it is delivered
    deliveries.deliver(msg)

    # Then it is its own duplicate: nothing detached, nothing attached
    assert gateway.methods_called() == ["retrieve_payment_method"]
    assert not gateway.payment_methods[known].used_up
    result = rows.event(msg.event_id)["result"]
    assert (result["card_id"], result["duplicate"]) == (known, True)


def test_started_fails_a_card_declined_at_attach_with_its_decline_code(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
) -> None:
    # Given Stripe's test PaymentMethod whose card check declines at attach
    customer_id = customer(ids("user"))
    msg = pm_received(ids, "pm_card_chargeDeclined")

    # When it is delivered
    outcome = deliveries.deliver(msg)

    # Then the event fails with card_declined and Stripe's decline code; nothing recorded
    assert outcome["status"] == "failed"
    event = rows.event(msg.event_id)
    assert (event["status"], event["error_code"]) == ("failed", "card_declined")
    assert event["result"] == {"decline_code": "generic_decline"}
    assert event["transient_failures"] == 0
    assert gateway.payment_methods_of(customer_id) == []
    assert rows.cards(msg.user_id) == []


def test_started_fails_an_unknown_payment_method(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
) -> None:
    # Given a PaymentMethod id Stripe does not know (another account's, or made up)
    customer(ids("user"))
    msg = pm_received(ids, "pm_doesnotexist")

    # When it is delivered
    deliveries.deliver(msg)

    # Then it fails with payment_method_not_found, nothing retried
    event = rows.event(msg.event_id)
    assert (event["status"], event["error_code"]) == ("failed", "payment_method_not_found")
    assert event["transient_failures"] == 0
    assert gateway.methods_called() == ["retrieve_payment_method"]


def test_started_waits_for_a_user_not_registered_yet(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
) -> None:
    # Given a PaymentMethod of a user whose user_registered has not been processed
    msg = pm_received(ids, gateway.add_payment_method(VISA))

    # When it is delivered
    outcome = deliveries.deliver(msg)

    # Then it waits for the customer without spending its budget or reading Stripe
    assert outcome["status"] == "retry_scheduled"
    assert gateway.calls == []
    event = rows.event(msg.event_id)
    assert (event["status"], event["recovery_point"]) == ("processing", "started")
    assert event["transient_failures"] == 0
    assert event["last_error"].startswith("customer_not_found: user ")


def test_a_second_payment_method_leaves_the_default_alone_unless_asked(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
    card: Callable[..., str],
) -> None:
    # Given a user whose default is a Visa from a token
    user = ids("user")
    customer_id = customer(user)
    visa = card(user, customer_id, VISA)
    plain = pm_received(ids, gateway.add_payment_method(MASTERCARD), "pm-plain")
    asked = pm_received(ids, gateway.add_payment_method("378282246310005"), "pm-asked",
                        make_default=True)  # fmt: skip

    # When a Mastercard PaymentMethod arrives, then an Amex one with make_default
    deliveries.deliver(plain)
    assert rows.default_card(user) == visa
    assert gateway.customers[customer_id].default_card == visa
    assert gateway.customers[customer_id].default_payment_method is None
    deliveries.deliver(asked)

    # Then the Amex is the default: the invoice default on Stripe, is_default in Postgres
    amex = rows.event(asked.event_id)["result"]["card_id"]
    assert rows.event(plain.event_id)["result"]["is_default"] is False
    assert gateway.customers[customer_id].default_payment_method == amex
    assert gateway.default_card(customer_id) == amex
    assert rows.default_card(user) == amex
    assert [c["kind"] for c in rows.cards(user)] == ["source", "payment_method", "payment_method"]
