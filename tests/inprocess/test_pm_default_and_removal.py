"""default_card_changed and card_removed of PaymentMethods (pm_...): the invoice default on
Stripe, detach for removal, and Postgres mirroring Stripe's default afterwards."""

from __future__ import annotations

from collections.abc import Callable

from core.errors import OutcomeUnknown
from tasks.messages import CardRemoved, DefaultCardChanged
from tests.inprocess._support import Deliveries, Rows
from tests.inprocess.fake_gateway import MASTERCARD, VISA, FakeGateway


def test_default_card_changed_to_a_payment_method_sets_the_invoice_default(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
    card: Callable[..., str],
    pm_card: Callable[..., str],
) -> None:
    # Given a user whose default is a Visa from a token, with a Mastercard PaymentMethod
    user = ids("user")
    customer_id = customer(user)
    visa, mastercard = card(user, customer_id, VISA), pm_card(user, customer_id, MASTERCARD)
    msg = DefaultCardChanged(event_id=ids("default"), user_id=user, card_id=mastercard)

    # When default_card_changed names the PaymentMethod
    deliveries.deliver(msg)

    # Then it is the invoice default on Stripe (which Stripe uses before default_source)
    # and the default in Postgres
    assert gateway.customers[customer_id].default_payment_method == mastercard
    assert gateway.default_card(customer_id) == mastercard
    assert rows.default_card(user) == mastercard
    event = rows.event(msg.event_id)
    assert event["status"] == "succeeded"
    assert event["result"] == {"card_id": mastercard, "previous_default_card_id": visa}


def test_default_card_changed_back_to_a_token_card_clears_the_invoice_default(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
    card: Callable[..., str],
    pm_card: Callable[..., str],
) -> None:
    # Given a user whose default is a PaymentMethod, with a Visa from a token as well
    user = ids("user")
    customer_id = customer(user)
    pm = pm_card(user, customer_id, MASTERCARD)
    visa = card(user, customer_id, VISA)
    assert gateway.default_card(customer_id) == pm
    msg = DefaultCardChanged(event_id=ids("default"), user_id=user, card_id=visa)

    # When default_card_changed names the token's card
    deliveries.deliver(msg)

    # Then it is Stripe's default (the invoice default cleared) and Postgres's
    assert gateway.customers[customer_id].default_payment_method is None
    assert gateway.default_card(customer_id) == visa
    assert rows.default_card(user) == visa


def test_card_removed_detaches_a_payment_method_and_mirrors_stripes_default(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
    card: Callable[..., str],
    pm_card: Callable[..., str],
) -> None:
    # Given a user with a Visa from a token (Stripe's default_source) and a PaymentMethod
    # that is the default (the invoice default)
    user = ids("user")
    customer_id = customer(user)
    visa = card(user, customer_id, VISA)
    pm = pm_card(user, customer_id, MASTERCARD)
    deliveries.deliver(DefaultCardChanged(event_id=ids("default"), user_id=user, card_id=pm))
    gateway.calls.clear()
    msg = CardRemoved(event_id=ids("remove"), user_id=user, card_id=pm)

    # When card_removed names the PaymentMethod
    deliveries.deliver(msg)

    # Then it is detached (not deleted as a source), and the default Stripe falls back to,
    # the Visa, is the default in Postgres too
    assert gateway.methods_called() == ["detach_payment_method", "default_card"]
    assert gateway.payment_methods[pm].used_up
    assert gateway.payment_methods_of(customer_id) == []
    assert rows.card(pm)["removed_at"] is not None
    assert rows.default_card(user) == visa
    event = rows.event(msg.event_id)
    assert event["status"] == "succeeded"
    assert event["result"] == {"card_id": pm, "already_removed": False, "default_card_id": visa}


def test_card_removed_of_a_payment_method_detached_already_counts_as_done(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    gateway: FakeGateway,
    rows: Rows,
    customer: Callable[[str], str],
    pm_card: Callable[..., str],
) -> None:
    # Given a PaymentMethod whose detach reached Stripe but lost its answer
    user = ids("user")
    customer_id = customer(user)
    pm = pm_card(user, customer_id, VISA)
    msg = CardRemoved(event_id=ids("remove"), user_id=user, card_id=pm)
    gateway.fail_next("detach_payment_method", OutcomeUnknown("no answer"), after_effect=True)
    deliveries.deliver(msg)
    assert rows.event(msg.event_id)["recovery_point"] == "card_removing"

    # When the event is delivered again
    deliveries.deliver(msg)

    # Then Stripe's refusal (not attached) is read as done: the card is removed, and the
    # user has no default left on either side
    assert gateway.methods_called() == [
        "detach_payment_method", "detach_payment_method", "retrieve_payment_method",
        "default_card",
    ]  # fmt: skip
    event = rows.event(msg.event_id)
    assert event["status"] == "succeeded"
    assert event["result"] == {"card_id": pm, "already_removed": False, "default_card_id": None}
    assert rows.card(pm)["removed_at"] is not None
    assert rows.default_card(user) is None
    assert gateway.default_card(customer_id) is None
