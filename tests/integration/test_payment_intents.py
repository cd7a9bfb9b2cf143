"""charge_requested through PaymentIntents, end to end: real workers, the HTTP Stripe
fake, Postgres. Success with a PaymentMethod and with a legacy card, a decline, 3-D Secure
completed by the customer on-session, an abandoned one canceled, and the Charges API kept
behind PAYWORKER_CHARGE_API=charges."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, text

from db import users
from tests.conftest import WorkerProcess, event_rows

VISA = "4242424242424242"
DECLINED_AT_CHARGE = "4000000000000341"

pytestmark = pytest.mark.usefixtures("no_faults")


@pytest.fixture(scope="module")
def watch_worker(start_worker: Callable[..., WorkerProcess]) -> WorkerProcess:
    """Re-reads a PaymentIntent waiting for its customer every second."""
    return start_worker(concurrency=2, PAYWORKER_ACTION_POLL_SECONDS="1")


@pytest.fixture(scope="module")
def expiry_worker(start_worker: Callable[..., WorkerProcess]) -> WorkerProcess:
    """Gives up on the customer after 1.8 seconds."""
    return start_worker(
        concurrency=2, PAYWORKER_ACTION_POLL_SECONDS="1", PAYWORKER_ACTION_EXPIRY_HOURS="0.0005"
    )


@pytest.fixture(scope="module")
def charges_worker(start_worker: Callable[..., WorkerProcess]) -> WorkerProcess:
    return start_worker(concurrency=2, PAYWORKER_CHARGE_API="charges")


def registered_user(publish, wait_for, ids, q: str) -> tuple[str, str]:
    """A registered user without a card; returns (user_id, customer_id)."""
    user, reg = ids("user"), ids("reg")
    publish("user_registered", queue=q, event_id=reg, user_id=user, email="pi@example.com")
    row = wait_for(reg)[reg]
    assert row["status"] == "succeeded", row
    return user, row["result"]["customer_id"]


def user_with_token_card(publish, wait_for, stripe_fake, ids, q: str, number: str = VISA):
    """A registered user whose default card is a legacy card_ (from a token); returns
    (user_id, customer_id, card_id)."""
    user, reg, tok = ids("user"), ids("reg"), ids("tok")
    publish("user_registered", queue=q, event_id=reg, user_id=user, email="pi@example.com")
    publish("card_token_received", queue=q, event_id=tok, user_id=user,
            token=stripe_fake.create_card_token(number))
    rows = wait_for(reg, tok)
    assert rows[reg]["status"] == rows[tok]["status"] == "succeeded", rows
    return user, rows[reg]["result"]["customer_id"], rows[tok]["result"]["card_id"]


def attach_payment_method(engine: Engine, stripe_fake, user: str, customer: str,
                          test_id: str, *, default: bool = True) -> str:
    """A PaymentMethod (from one of Stripe's test ids) attached to the customer on Stripe
    and recorded as the user's card, as a processed payment_method_received leaves it."""
    pm = stripe_fake._stripe("POST", f"/v1/payment_methods/{test_id}/attach",
                             form={"customer": customer})
    card = pm["card"]
    with engine.begin() as conn:
        if default:
            conn.execute(text("UPDATE cards SET is_default = false WHERE user_id = :u"),
                         {"u": user})
        users.add_card(conn, users.NewCard(
            stripe_card_id=pm["id"], user_id=user, fingerprint=card["fingerprint"],
            brand=card["brand"], last4=card["last4"], exp_month=card["exp_month"],
            exp_year=card["exp_year"], is_default=default, event_id=f"setup-{pm['id']}"))
        conn.execute(text("UPDATE cards SET kind = 'payment_method' WHERE stripe_card_id = :c"),
                     {"c": pm["id"]})
    return str(pm["id"])


def charge_row(engine: Engine, event_id: str) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM charges WHERE event_id = :e"),
                           {"e": event_id}).mappings().one()
    return dict(row)


def wait_status(engine: Engine, event_id: str, status: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    row: dict[str, Any] = {}
    while time.monotonic() < deadline:
        row = event_rows(engine, [event_id]).get(event_id, {})
        if row.get("status") == status:
            return row
        time.sleep(0.1)
    raise AssertionError(f"{event_id} not {status} within {timeout}s: {row.get('status')}")


@pytest.mark.parametrize("test_id", ["pm_card_visa", "pm_card_mastercard"])
def test_a_payment_method_is_charged_with_one_payment_intent(
    publish, wait_for, engine, stripe_fake, ids, worker, test_id
):
    # Given a user whose default card is a PaymentMethod
    user, customer = registered_user(publish, wait_for, ids, worker.queue)
    pm = attach_payment_method(engine, stripe_fake, user, customer, test_id)

    # When a charge is requested (the session worker: PaymentIntents, the default)
    chg = ids("chg")
    publish("charge_requested", event_id=chg, user_id=user, amount=1500, currency="eur")
    row = wait_for(chg)[chg]

    # Then one PaymentIntent paid it, under the event's key, and both rows say so
    assert row["status"] == "succeeded", row
    [intent] = stripe_fake.list_payment_intents(customer)
    assert intent["status"] == "succeeded" and intent["payment_method"] == pm
    assert intent["metadata"] == {"event_id": chg, "user_id": user}
    posts = stripe_fake.requests(method="POST", path="/v1/payment_intents")
    assert [p["idempotency_key"] for p in posts if chg in (p["idempotency_key"] or "")] == [
        f"pw:{chg}:payment_intent"]
    assert row["result"]["payment_intent_id"] == intent["id"]
    assert row["result"]["charge_id"] == intent["latest_charge"]
    charge = charge_row(engine, chg)
    assert (charge["status"], charge["payment_intent_id"], charge["stripe_charge_id"]) == (
        "succeeded", intent["id"], intent["latest_charge"])
    legacy = stripe_fake.requests(method="POST", path="/v1/charges")
    assert [p for p in legacy if chg in (p["idempotency_key"] or "")] == []


def test_a_legacy_card_is_charged_as_the_payment_method_of_a_payment_intent(
    publish, wait_for, engine, stripe_fake, ids, worker
):
    # Given a user whose default card is a legacy card_ from a token
    user, customer, card = user_with_token_card(publish, wait_for, stripe_fake, ids,
                                                worker.queue)
    # When a charge is requested
    chg = ids("chg")
    publish("charge_requested", event_id=chg, user_id=user, amount=990, currency="usd")
    row = wait_for(chg)[chg]
    # Then a PaymentIntent with that card paid it
    assert row["status"] == "succeeded", row
    [intent] = stripe_fake.list_payment_intents(customer)
    assert (intent["status"], intent["payment_method"]) == ("succeeded", card)
    assert charge_row(engine, chg)["payment_intent_id"] == intent["id"]


def test_a_declined_payment_intent_fails_with_the_decline_code(
    publish, wait_for, engine, stripe_fake, ids, worker
):
    # Given a card that is declined when charged
    user, customer, _ = user_with_token_card(publish, wait_for, stripe_fake, ids,
                                             worker.queue, DECLINED_AT_CHARGE)
    # When it is charged
    chg = ids("chg")
    publish("charge_requested", event_id=chg, user_id=user, amount=990, currency="usd")
    row = wait_for(chg)[chg]
    # Then the event and the charge fail card_declined, with the PaymentIntent recorded
    assert (row["status"], row["error_code"]) == ("failed", "card_declined"), row
    [intent] = stripe_fake.list_payment_intents(customer)
    assert intent["status"] == "requires_payment_method"
    charge = charge_row(engine, chg)
    assert (charge["status"], charge["failure_code"]) == ("failed", "card_declined")
    assert charge["decline_code"] and charge["payment_intent_id"] == intent["id"]
    assert charge["stripe_charge_id"] == intent["latest_charge"]


def test_authentication_required_is_completed_by_the_customer_then_succeeds(
    publish, wait_for, engine, stripe_fake, ids, watch_worker
):
    # Given a user whose card needs 3-D Secure
    q = watch_worker.queue
    user, customer = registered_user(publish, wait_for, ids, q)
    pm = attach_payment_method(engine, stripe_fake, user, customer,
                               "pm_card_authenticationRequired")

    # When it is charged off-session
    chg = ids("chg")
    publish("charge_requested", queue=q, event_id=chg, user_id=user, amount=4200,
            currency="eur")
    waiting = wait_status(engine, chg, "action_required")

    # Then the event waits for its customer, the client secret in its result only
    [intent] = stripe_fake.list_payment_intents(customer)
    assert waiting["error_code"] == "authentication_required"
    secret = waiting["result"]["client_secret"]
    assert secret.startswith(f"{intent['id']}_secret_")
    assert waiting["result"] == {"payment_intent_id": intent["id"], "client_secret": secret,
                                 "payment_method": pm}
    charge = charge_row(engine, chg)
    assert (charge["status"], charge["payment_intent_id"]) == ("requires_action", intent["id"])
    assert secret not in watch_worker.log()

    # When the customer confirms on-session (as stripe.js does) and passes 3-D Secure
    confirmed = stripe_fake._stripe("POST", f"/v1/payment_intents/{intent['id']}/confirm",
                                    form={"payment_method": waiting["result"]["payment_method"]})
    assert confirmed["status"] == "requires_action"
    stripe_fake.authenticate_payment_intent(intent["id"], success=True)

    # Then the next re-read succeeds the event, once, without the client secret
    row = wait_for(chg, timeout=30)[chg]
    assert row["status"] == "succeeded", row
    assert "client_secret" not in row["result"]
    assert row["result"]["payment_intent_id"] == intent["id"]
    paid = stripe_fake.get_payment_intent(intent["id"])
    charge = charge_row(engine, chg)
    assert (charge["status"], charge["stripe_charge_id"]) == ("succeeded", paid["latest_charge"])
    assert len(stripe_fake.list_payment_intents(customer)) == 1
    assert secret not in watch_worker.log()


def test_an_abandoned_authentication_is_canceled_and_the_event_fails(
    publish, wait_for, engine, stripe_fake, ids, expiry_worker
):
    # Given a charge waiting for a customer whose 3-D Secure fails
    q = expiry_worker.queue
    user, customer = registered_user(publish, wait_for, ids, q)
    attach_payment_method(engine, stripe_fake, user, customer, "pm_card_authenticationRequired")
    chg = ids("chg")
    publish("charge_requested", queue=q, event_id=chg, user_id=user, amount=4200,
            currency="eur")
    waiting = wait_status(engine, chg, "action_required")
    intent_id = waiting["result"]["payment_intent_id"]
    stripe_fake._stripe("POST", f"/v1/payment_intents/{intent_id}/confirm",
                        form={"payment_method": waiting["result"]["payment_method"]})
    stripe_fake.authenticate_payment_intent(intent_id, success=False)

    # When PAYWORKER_ACTION_EXPIRY_HOURS passes
    row = wait_for(chg, timeout=30)[chg]

    # Then the PaymentIntent is canceled as abandoned and the event fails
    assert (row["status"], row["error_code"]) == ("failed", "authentication_required"), row
    assert "client_secret" not in (row["result"] or {})
    intent = stripe_fake.get_payment_intent(intent_id)
    assert (intent["status"], intent["cancellation_reason"]) == ("canceled", "abandoned")
    cancels = stripe_fake.requests(method="POST", path=f"/v1/payment_intents/{intent_id}/cancel")
    assert [c["idempotency_key"] for c in cancels] == [f"pw:{chg}:cancel"]
    charge = charge_row(engine, chg)
    assert (charge["status"], charge["payment_intent_id"]) == ("canceled", intent_id)


def test_a_payment_intent_canceled_on_stripe_while_watched_fails_the_event(
    publish, wait_for, engine, stripe_fake, ids, watch_worker
):
    # Given a charge waiting for its customer's 3-D Secure
    q = watch_worker.queue
    user, customer = registered_user(publish, wait_for, ids, q)
    attach_payment_method(engine, stripe_fake, user, customer, "pm_card_authenticationRequired")
    chg = ids("chg")
    publish("charge_requested", queue=q, event_id=chg, user_id=user, amount=3100,
            currency="eur")
    intent_id = wait_status(engine, chg, "action_required")["result"]["payment_intent_id"]

    # When someone cancels its PaymentIntent on Stripe (the dashboard)
    stripe_fake._stripe("POST", f"/v1/payment_intents/{intent_id}/cancel",
                        form={"cancellation_reason": "requested_by_customer"})

    # Then the watch fails the event payment_canceled, once, and the charge is canceled
    row = wait_for(chg, timeout=30)[chg]
    assert (row["status"], row["error_code"]) == ("failed", "payment_canceled"), row
    assert "client_secret" not in (row["result"] or {})
    charge = charge_row(engine, chg)
    assert (charge["status"], charge["payment_intent_id"]) == ("canceled", intent_id)
    creates = stripe_fake.requests(method="POST", path="/v1/payment_intents")
    assert [c["idempotency_key"] for c in creates if chg in (c["idempotency_key"] or "")] == [
        f"pw:{chg}:payment_intent"
    ]


def test_the_charges_api_still_makes_a_charge(
    publish, wait_for, engine, stripe_fake, ids, charges_worker
):
    # Given a worker with PAYWORKER_CHARGE_API=charges
    q = charges_worker.queue
    user, customer, _ = user_with_token_card(publish, wait_for, stripe_fake, ids, q)
    # When a charge is requested
    chg = ids("chg")
    publish("charge_requested", queue=q, event_id=chg, user_id=user, amount=700,
            currency="usd")
    row = wait_for(chg)[chg]
    # Then it is a Charge, under the legacy key, and no PaymentIntent
    assert row["status"] == "succeeded", row
    assert stripe_fake.list_payment_intents(customer) == []
    [charge] = stripe_fake.list_charges(customer)
    assert row["result"]["charge_id"] == charge["id"] and "payment_intent_id" not in row["result"]
    posts = stripe_fake.requests(method="POST", path="/v1/charges")
    assert f"pw:{chg}:charge" in [p["idempotency_key"] for p in posts]
    assert charge_row(engine, chg)["payment_intent_id"] is None
