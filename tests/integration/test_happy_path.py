"""Each message type, end to end: upstream publish → worker → Stripe fake → Postgres."""

from __future__ import annotations

from sqlalchemy import text


def test_registration_card_and_charge_succeed(publish, wait_for, engine, stripe_fake, ids):
    # Given a registered user with one card
    user, reg, tok, chg = ids("user"), ids("reg"), ids("tok"), ids("chg")
    publish("user_registered", event_id=reg, user_id=user, email="ada@example.com", name="Ada")
    token = stripe_fake.create_card_token("4242424242424242")
    publish("card_token_received", event_id=tok, user_id=user, token=token)
    wait_for(reg, tok)

    # When a charge without card_id is requested
    publish("charge_requested", event_id=chg, user_id=user, amount=1999, currency="EUR")
    rows = wait_for(chg)

    # Then it succeeds on the default card, once, and every table agrees
    assert rows[chg]["status"] == "succeeded", rows[chg]
    with engine.connect() as conn:
        customer = conn.execute(
            text("SELECT * FROM customers WHERE user_id = :u"), {"u": user}
        ).mappings().one()
        card = conn.execute(
            text("SELECT * FROM cards WHERE user_id = :u"), {"u": user}
        ).mappings().one()
        charge = conn.execute(
            text("SELECT * FROM charges WHERE event_id = :e"), {"e": chg}
        ).mappings().one()
    assert card["is_default"] and card["last4"] == "4242" and card["fingerprint"]
    assert charge["status"] == "succeeded" and charge["amount"] == 1999
    assert charge["currency"] == "eur" and charge["stripe_card_id"] == card["stripe_card_id"]
    stripe_charges = stripe_fake.list_charges(customer["stripe_customer_id"])
    assert [c["id"] for c in stripe_charges] == [charge["stripe_charge_id"]]
    assert stripe_charges[0]["metadata"] == {"event_id": chg, "user_id": user}
