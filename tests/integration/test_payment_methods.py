"""PaymentMethods and SetupIntents on Stripe and in Postgres agree: payment_method_received,
setup_requested, and default_card_changed / card_removed of a pm_, against a real worker and
the Stripe fake over HTTP."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, text

from stripe_fake import FakeStripe
from tests.integration.test_secrets import task_events

VISA = "4242424242424242"
MASTERCARD = "5555555555554444"

pytestmark = pytest.mark.usefixtures("no_faults")


@pytest.fixture
def register(
    publish: Callable[..., str], wait_for: Callable[..., Any], ids: Callable[[str], str]
) -> Callable[[str], str]:
    """Factory: register a user; returns the Stripe customer id."""

    def make(user: str) -> str:
        reg = ids(f"reg-{user}")
        publish("user_registered", event_id=reg, user_id=user, email="ada@example.com")
        row = wait_for(reg)[reg]
        assert row["status"] == "succeeded", row
        return str(row["result"]["customer_id"])

    return make


@pytest.fixture
def send(
    publish: Callable[..., str], wait_for: Callable[..., Any], ids: Callable[[str], str]
) -> Callable[..., dict[str, Any]]:
    """Factory: publish one message under a fresh event id; returns its final ledger row."""
    count = iter(range(1000))

    def make(message_type: str, **kwargs: Any) -> dict[str, Any]:
        event = ids(f"{message_type}{next(count)}")
        publish(message_type, event_id=event, **kwargs)
        row: dict[str, Any] = wait_for(event)[event]
        return row

    return make


def card_row(engine: Engine, card_id: str) -> dict[str, Any]:
    with engine.connect() as conn:
        row = (
            conn.execute(text("SELECT * FROM cards WHERE stripe_card_id = :c"), {"c": card_id})
            .mappings()
            .first()
        )
    assert row is not None, card_id
    return dict(row)


def invoice_default(stripe_fake: FakeStripe, customer: str) -> str | None:
    settings = stripe_fake.get_customer(customer).get("invoice_settings") or {}
    value = settings.get("default_payment_method")
    return value if value is None or isinstance(value, str) else value["id"]


def attaches_of(stripe_fake: FakeStripe) -> list[dict[str, Any]]:
    return [r for r in stripe_fake.requests(path_prefix="/v1/payment_methods/")
            if r["method"] == "POST" and r["path"].endswith("/attach")]  # fmt: skip


def test_payment_method_is_attached_and_becomes_the_invoice_default(
    register, send, engine, stripe_fake, ids
):
    # Given a registered user without cards
    user = ids("user")
    customer = register(user)

    # When stripe.js's pm_card_visa arrives in payment_method_received
    row = send("payment_method_received", user_id=user, payment_method="pm_card_visa")

    # Then Stripe attached a copy of it to the customer and made it the invoice default,
    # and Postgres records it as the default PaymentMethod
    assert row["status"] == "succeeded", row
    result = row["result"]
    pm = result["card_id"]
    assert pm.startswith("pm_") and pm != "pm_card_visa"
    assert (result["kind"], result["is_default"], result["duplicate"]) == (
        "payment_method", True, False,
    )  # fmt: skip
    assert (result["brand"], result["last4"]) == ("visa", "4242")
    assert stripe_fake.get_payment_method(pm)["customer"] == customer
    assert invoice_default(stripe_fake, customer) == pm
    stored = card_row(engine, pm)
    assert (stored["kind"], stored["is_default"], stored["user_id"]) == (
        "payment_method", True, user,
    )  # fmt: skip


def test_a_token_and_a_payment_method_of_one_card_are_one_card(
    register, send, engine, stripe_fake, ids
):
    # Given a user whose Visa was added from a token
    user = ids("user")
    customer = register(user)
    token = stripe_fake.create_card_token(VISA)
    first = send("card_token_received", user_id=user, token=token)
    assert first["status"] == "succeeded", first
    stripe_fake.clear_requests()

    # When a PaymentMethod of the same Visa arrives
    pm = stripe_fake.create_payment_method(VISA)
    row = send("payment_method_received", user_id=user, payment_method=pm)

    # Then it is a duplicate of the token's card, and nothing was attached
    assert row["status"] == "succeeded", row
    assert row["result"]["card_id"] == first["result"]["card_id"]
    assert row["result"]["duplicate"] is True
    assert row["result"]["fingerprint"] == first["result"]["fingerprint"]
    assert attaches_of(stripe_fake) == []
    assert stripe_fake.get_payment_method(pm)["customer"] is None
    assert [m["id"] for m in stripe_fake.list_payment_methods(customer)] == [
        first["result"]["card_id"]
    ]


def test_a_card_declined_at_attach_fails_with_its_decline_code(register, send, engine, ids):
    # Given a registered user
    user = ids("user")
    register(user)

    # When Stripe's test card that declines at attach arrives
    row = send("payment_method_received", user_id=user, payment_method="pm_card_chargeDeclined")

    # Then the event fails with card_declined and the decline code; no card is recorded
    assert (row["status"], row["error_code"]) == ("failed", "card_declined"), row
    assert row["result"] == {"decline_code": "generic_decline"}
    with engine.connect() as conn:
        count = conn.execute(
            text("SELECT count(*) FROM cards WHERE user_id = :u"), {"u": user}
        ).scalar()
    assert count == 0


def test_a_payment_method_of_another_customer_is_unavailable(register, send, stripe_fake, ids):
    # Given a PaymentMethod that another user's customer holds
    alice, eve = ids("alice"), ids("eve")
    register(alice)
    eve_customer = register(eve)
    eves = send("payment_method_received", user_id=eve, payment_method="pm_card_mastercard")
    pm = eves["result"]["card_id"]

    # When it arrives for Alice
    row = send("payment_method_received", user_id=alice, payment_method=pm)

    # Then it fails, and Eve keeps her card
    assert (row["status"], row["error_code"]) == ("failed", "payment_method_unavailable"), row
    assert stripe_fake.get_payment_method(pm)["customer"] == eve_customer


def test_an_unknown_payment_method_fails_not_found(register, send, stripe_fake, ids):
    # Given a registered user
    user = ids("una")
    register(user)

    # When a PaymentMethod id Stripe does not know arrives
    row = send("payment_method_received", user_id=user, payment_method="pm_1NoSuchThing")

    # Then it fails payment_method_not_found and nothing was attached
    assert (row["status"], row["error_code"]) == ("failed", "payment_method_not_found"), row
    assert not [a for a in attaches_of(stripe_fake) if "pm_1NoSuchThing" in a["path"]]


def test_setup_then_payment_method_is_recorded_without_a_second_attach(
    register, send, publish, wait_for, upstream, worker, engine, stripe_fake, ids
):
    # Given a registered user
    user = ids("user")
    customer = register(user)

    # When the app asks for a SetupIntent (with Flower's event stream listening)
    event = ids("setup")
    with task_events(upstream) as events:
        publish("setup_requested", event_id=event, user_id=user)
        setup = wait_for(event)[event]
        events.until(lambda e: e.get("type") == "task-succeeded" and event in str(e))

    # Then the event's result holds the SetupIntent's id and client secret, which neither
    # the worker log nor Flower's task events show
    assert setup["status"] == "succeeded", setup
    seti, secret = setup["result"]["setup_intent_id"], setup["result"]["client_secret"]
    assert seti.startswith("seti_") and secret.startswith(f"{seti}_secret_")
    assert set(setup["result"]) == {"setup_intent_id", "client_secret"}
    assert secret not in worker.log()
    assert f"event_id={event}" in worker.log()
    succeeded = [e for e in events if e.get("type") == "task-succeeded" and event in str(e)]
    assert succeeded, list(events)
    assert secret not in str(list(events))

    # When the customer confirms it in stripe.js, and the app sends the PaymentMethod
    stripe_fake.clear_requests()
    confirmed = stripe_fake.confirm_setup_intent(seti, "pm_card_visa")
    assert confirmed["status"] == "succeeded", confirmed
    pm = confirmed["payment_method"]
    row = send("payment_method_received", user_id=user, payment_method=pm)

    # Then it is recorded as attached by the SetupIntent (no attach sent) and is the default
    assert row["status"] == "succeeded", row
    assert (row["result"]["card_id"], row["result"]["duplicate"]) == (pm, False)
    assert attaches_of(stripe_fake) == []
    assert invoice_default(stripe_fake, customer) == pm
    assert card_row(engine, pm)["is_default"] is True


def test_default_card_changed_to_a_payment_method_and_card_removed_detaches_it(
    register, send, engine, stripe_fake, ids
):
    # Given a user with a Visa from a token (the default) and a Mastercard PaymentMethod
    user = ids("user")
    customer = register(user)
    visa = send("card_token_received", user_id=user, token=stripe_fake.create_card_token(VISA))
    mc = send("payment_method_received", user_id=user, payment_method="pm_card_mastercard")
    visa_id, pm = visa["result"]["card_id"], mc["result"]["card_id"]
    assert mc["result"]["is_default"] is False

    # When default_card_changed names the PaymentMethod
    changed = send("default_card_changed", user_id=user, card_id=pm)

    # Then it is the invoice default on Stripe and the default in Postgres
    assert changed["status"] == "succeeded", changed
    assert changed["result"] == {"card_id": pm, "previous_default_card_id": visa_id}
    assert invoice_default(stripe_fake, customer) == pm
    assert card_row(engine, pm)["is_default"] and not card_row(engine, visa_id)["is_default"]

    # When card_removed names it
    removed = send("card_removed", user_id=user, card_id=pm)

    # Then it is detached on Stripe, removed in Postgres, and the Visa (Stripe's default
    # source) is the default again on both sides
    assert removed["status"] == "succeeded", removed
    assert removed["result"] == {"card_id": pm, "already_removed": False,
                                 "default_card_id": visa_id}  # fmt: skip
    assert stripe_fake.get_payment_method(pm)["customer"] is None
    assert invoice_default(stripe_fake, customer) is None
    assert card_row(engine, pm)["removed_at"] is not None
    assert card_row(engine, visa_id)["is_default"] is True
