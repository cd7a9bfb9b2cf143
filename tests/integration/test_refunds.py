"""refund_requested end to end: upstream publish → worker → Stripe fake → Postgres, after a
charge made by charge_requested (whichever charge API the worker uses)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, text

from stripe_fake import FakeStripe

Publish = Callable[..., str]
WaitFor = Callable[..., dict[str, dict[str, Any]]]


@dataclass(frozen=True)
class Paid:
    user_id: str
    event_id: str
    charge_id: str
    customer_id: str


def paid_charge(
    publish: Publish, wait_for: WaitFor, engine: Engine, stripe_fake: FakeStripe,
    ids: Callable[[str], str], user: str, amount: int,
) -> Paid:  # fmt: skip
    """A registered user with a card and a succeeded charge of `amount` EUR cents."""
    user_id, reg, tok, chg = ids(user), ids(f"reg-{user}"), ids(f"tok-{user}"), ids(f"chg-{user}")
    publish("user_registered", event_id=reg, user_id=user_id, email=f"{user}@example.com")
    token = stripe_fake.create_card_token("4242424242424242")
    publish("card_token_received", event_id=tok, user_id=user_id, token=token)
    wait_for(reg, tok)
    publish("charge_requested", event_id=chg, user_id=user_id, amount=amount, currency="eur")
    assert wait_for(chg)[chg]["status"] == "succeeded"
    charge, customer = row(engine, "charges", chg), one(engine, "customers", "user_id", user_id)
    return Paid(user_id, chg, charge["stripe_charge_id"], customer["stripe_customer_id"])


def one(engine: Engine, table: str, column: str, value: str) -> dict[str, Any]:
    with engine.connect() as conn:
        found = conn.execute(
            text(f"SELECT * FROM {table} WHERE {column} = :v"), {"v": value}
        ).mappings().one()
    return dict(found)


def row(engine: Engine, table: str, event_id: str) -> dict[str, Any]:
    return one(engine, table, "event_id", event_id)


def stripe_charge(stripe_fake: FakeStripe, paid: Paid) -> dict[str, Any]:
    [charge] = [c for c in stripe_fake.list_charges(paid.customer_id) if c["id"] == paid.charge_id]
    return charge


def test_partial_then_full_refund_and_an_over_refund_refused_before_stripe(
    publish: Publish, wait_for: WaitFor, engine: Engine, stripe_fake: FakeStripe,
    ids: Callable[[str], str],
) -> None:  # fmt: skip
    # Given a succeeded charge of 30.00 EUR
    paid = paid_charge(publish, wait_for, engine, stripe_fake, ids, "ada", 3000)

    # When 10.00 is refunded
    partial = ids("partial")
    publish(
        "refund_requested", event_id=partial, user_id=paid.user_id,
        charge_event_id=paid.event_id, amount=1000, reason="requested_by_customer",
        metadata={"ticket": "T-1"},
    )  # fmt: skip
    event = wait_for(partial)[partial]

    # Then Stripe holds one refund of 1000 with our metadata; both sides say 1000 refunded
    assert event["status"] == "succeeded", event
    [refund] = stripe_fake.list_refunds(charge=paid.charge_id)
    assert (refund["amount"], refund["reason"]) == (1000, "requested_by_customer")
    assert refund["metadata"] == {"ticket": "T-1", "event_id": partial, "user_id": paid.user_id}
    assert event["result"] == {
        "refund_id": refund["id"], "charge_event_id": paid.event_id,
        "charge_id": paid.charge_id, "amount": 1000, "currency": "eur", "status": "succeeded",
        "amount_refunded": 1000, "reason": "requested_by_customer",
    }  # fmt: skip
    refund_row = row(engine, "refunds", partial)
    assert (refund_row["status"], refund_row["stripe_refund_id"]) == ("succeeded", refund["id"])
    assert row(engine, "charges", paid.event_id)["amount_refunded"] == 1000
    assert stripe_charge(stripe_fake, paid)["amount_refunded"] == 1000

    # When 25.00 more is asked (20.00 remain)
    over = ids("over")
    publish(
        "refund_requested", event_id=over, user_id=paid.user_id,
        charge_event_id=paid.event_id, amount=2500,
    )  # fmt: skip
    event = wait_for(over)[over]

    # Then it fails refund_exceeds_charge and no refund reaches Stripe
    assert (event["status"], event["error_code"]) == ("failed", "refund_exceeds_charge"), event
    assert len(stripe_fake.list_refunds(charge=paid.charge_id)) == 1

    # When the rest is refunded (no amount)
    rest = ids("rest")
    publish("refund_requested", event_id=rest, user_id=paid.user_id, charge_event_id=paid.event_id)
    event = wait_for(rest)[rest]

    # Then 20.00 is refunded; the charge is refunded in full on Stripe and in Postgres
    assert event["status"] == "succeeded", event
    assert (event["result"]["amount"], event["result"]["amount_refunded"]) == (2000, 3000)
    assert sorted(r["amount"] for r in stripe_fake.list_refunds(charge=paid.charge_id)) == [
        1000, 2000,
    ]  # fmt: skip
    on_stripe = stripe_charge(stripe_fake, paid)
    assert (on_stripe["amount_refunded"], on_stripe["refunded"]) == (3000, True)
    assert row(engine, "charges", paid.event_id)["amount_refunded"] == 3000


def test_a_refund_of_another_users_charge_is_refused(
    publish: Publish, wait_for: WaitFor, engine: Engine, stripe_fake: FakeStripe,
    ids: Callable[[str], str],
) -> None:  # fmt: skip
    # Given Ada's succeeded charge
    ada = paid_charge(publish, wait_for, engine, stripe_fake, ids, "ada", 1500)

    # When Bob asks to refund it
    bobs = ids("bobs")
    publish("refund_requested", event_id=bobs, user_id=ids("bob"), charge_event_id=ada.event_id)
    event = wait_for(bobs)[bobs]

    # Then it fails charge_not_found; nothing is refunded anywhere
    assert (event["status"], event["error_code"]) == ("failed", "charge_not_found"), event
    assert stripe_fake.list_refunds(charge=ada.charge_id) == []
    assert row(engine, "charges", ada.event_id)["amount_refunded"] == 0
    assert stripe_charge(stripe_fake, ada)["amount_refunded"] == 0


def test_a_refund_of_a_declined_charge_is_not_refundable(
    publish: Publish, wait_for: WaitFor, engine: Engine, stripe_fake: FakeStripe,
    ids: Callable[[str], str],
) -> None:  # fmt: skip
    # Given a charge the card declined
    user, reg, tok, chg = ids("dee"), ids("reg-dee"), ids("tok-dee"), ids("chg-dee")
    publish("user_registered", event_id=reg, user_id=user, email="dee@example.com")
    publish("card_token_received", event_id=tok, user_id=user,
            token=stripe_fake.create_card_token("4000000000000341"))  # fmt: skip
    wait_for(reg, tok)
    publish("charge_requested", event_id=chg, user_id=user, amount=900, currency="eur")
    assert wait_for(chg)[chg]["error_code"] == "card_declined"

    # When its refund is asked for
    ref = ids("ref-dee")
    publish("refund_requested", event_id=ref, user_id=user, charge_event_id=chg)
    event = wait_for(ref)[ref]

    # Then it fails charge_not_refundable, before Stripe, and no refunds row is written
    assert (event["status"], event["error_code"]) == ("failed", "charge_not_refundable"), event
    declined = row(engine, "charges", chg)["stripe_charge_id"]
    assert declined is not None and stripe_fake.list_refunds(charge=declined) == []
    sent = [r["idempotency_key"] for r in stripe_fake.requests(method="POST", path="/v1/refunds")]
    assert not [key for key in sent if key and ref in key]
    with engine.connect() as conn:
        count = conn.execute(
            text("SELECT count(*) FROM refunds WHERE event_id = :e"), {"e": ref}
        ).scalar()
    assert count == 0


def test_an_invalid_refund_message_is_recorded_as_invalid(
    publish: Publish, wait_for: WaitFor, stripe_fake: FakeStripe, ids: Callable[[str], str],
) -> None:  # fmt: skip
    # Given a refund whose amount is a string and whose reason is not Stripe's
    ref = ids("ref-bad")

    # When it is published
    publish("refund_requested", event_id=ref, user_id=ids("ivy"), charge_event_id="chg-1",
            amount="500", reason="changed_mind")  # fmt: skip
    event = wait_for(ref)[ref]

    # Then it is failed invalid_message, naming both fields, and nothing reached Stripe
    assert (event["status"], event["error_code"]) == ("failed", "invalid_message"), event
    assert "amount" in event["error_message"] and "reason" in event["error_message"]
    assert all(
        r["idempotency_key"] is None or ref not in r["idempotency_key"]
        for r in stripe_fake.requests(method="POST", path="/v1/refunds")
    )
