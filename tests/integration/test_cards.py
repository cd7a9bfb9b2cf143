"""Cards on Stripe and in Postgres agree: deduplication by fingerprint, the default card,
removal, and cards of other users, against a real worker and the Stripe fake over HTTP."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, text

from stripe_fake import FakeStripe

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
def add_card(
    publish: Callable[..., str], wait_for: Callable[..., Any], stripe_fake: FakeStripe,
    ids: Callable[[str], str],
) -> Callable[..., dict[str, Any]]:
    """Factory: a card_token_received with a fresh token for `number`; returns the event row."""
    count = iter(range(1000))

    def make(user: str, number: str = VISA, make_default: bool = False) -> dict[str, Any]:
        event = ids(f"card{next(count)}-{user}")
        token = stripe_fake.create_card_token(number)
        publish("card_token_received", event_id=event, user_id=user, token=token,
                make_default=make_default)
        row: dict[str, Any] = wait_for(event)[event]
        assert row["status"] == "succeeded", row
        return row

    return make


def cards_of(engine: Engine, user: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT * FROM cards WHERE user_id = :u ORDER BY created_at"), {"u": user}
        ).mappings()
        return [dict(r) for r in rows]


def active(cards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for c in cards if c["removed_at"] is None]


def pg_default(engine: Engine, user: str) -> str | None:
    defaults = [c["stripe_card_id"] for c in active(cards_of(engine, user)) if c["is_default"]]
    assert len(defaults) <= 1, defaults
    return defaults[0] if defaults else None


def stripe_default(stripe_fake: FakeStripe, customer: str) -> str | None:
    value = stripe_fake.get_customer(customer).get("default_source")
    return value if value is None or isinstance(value, str) else value["id"]


def stripe_card_ids(stripe_fake: FakeStripe, customer: str) -> list[str]:
    return [c["id"] for c in stripe_fake.list_cards(customer)]


def sources_path(customer: str) -> str:
    return f"^/v1/customers/{re.escape(customer)}/sources$"


def writes_to(stripe_fake: FakeStripe, customer: str) -> list[dict[str, Any]]:
    """POST and DELETE requests the worker sent about this customer."""
    return [r for r in stripe_fake.requests(path_prefix=f"/v1/customers/{customer}")
            if r["method"] in ("POST", "DELETE")]


# ---- adding cards ----------------------------------------------------------------------


def test_first_card_becomes_the_default(register, add_card, engine, stripe_fake, ids):
    # Given a registered user without cards
    user = ids("user")
    customer = register(user)

    # When the first card is added (make_default not asked)
    row = add_card(user)

    # Then it is the default in Postgres and on Stripe
    card_id = row["result"]["card_id"]
    assert row["result"]["is_default"] is True
    assert pg_default(engine, user) == card_id
    assert stripe_default(stripe_fake, customer) == card_id


def test_same_card_added_twice_is_attached_once(register, add_card, engine, stripe_fake, ids):
    # Given a user with a card
    user = ids("user")
    customer = register(user)
    first = add_card(user, VISA)

    # When the same card number arrives again, as a new token
    second = add_card(user, VISA)

    # Then the second event reports the first card as a duplicate
    assert second["result"]["duplicate"] is True
    assert second["result"]["card_id"] == first["result"]["card_id"]
    # and the card was never attached twice: one card on Stripe and in Postgres
    assert stripe_card_ids(stripe_fake, customer) == [first["result"]["card_id"]]
    attaches = [r for r in writes_to(stripe_fake, customer) if r["path"].endswith("/sources")]
    assert len(attaches) == 1, attaches
    assert [c["stripe_card_id"] for c in cards_of(engine, user)] == [first["result"]["card_id"]]


def test_same_card_added_concurrently_leaves_one_active_card(
    register, publish, wait_for, engine, stripe_fake, ids
):
    # Given a user, and a Stripe slow to answer attaches so two of them overlap
    user = ids("user")
    customer = register(user)
    stripe_fake.inject(method="POST", path=sources_path(customer), delay=1.0, when="after",
                       times=2)

    # When the same card arrives twice at once, as two tokens
    events = [ids("card-a"), ids("card-b")]
    for event in events:
        publish("card_token_received", event_id=event, user_id=user,
                token=stripe_fake.create_card_token(VISA))
    rows = wait_for(*events)

    # Then both succeed: one attached the card, the other lost the race and adopted it
    assert {r["status"] for r in rows.values()} == {"succeeded"}, rows
    results = sorted((r["result"] for r in rows.values()), key=lambda r: r["duplicate"])
    winner, loser = results
    assert (winner["duplicate"], loser["duplicate"]) == (False, True)
    assert loser["card_id"] == winner["card_id"]
    assert loser.get("deleted_duplicate_card_id"), "the attaches did not race"
    # and one active card is left, the same on Stripe and in Postgres, and it is the default
    assert stripe_card_ids(stripe_fake, customer) == [winner["card_id"]]
    assert [c["stripe_card_id"] for c in active(cards_of(engine, user))] == [winner["card_id"]]
    assert pg_default(engine, user) == stripe_default(stripe_fake, customer) == winner["card_id"]


def test_two_first_cards_added_concurrently_agree_on_the_default(
    register, publish, wait_for, engine, stripe_fake, ids
):
    # Given a user without cards, and a Stripe that answers the first attach it performs
    # last (Stripe makes the first attached source the default)
    user = ids("user")
    customer = register(user)
    stripe_fake.inject(method="POST", path=sources_path(customer), delay=1.2, when="after",
                       times=1)
    stripe_fake.inject(method="POST", path=sources_path(customer), delay=0.05, when="after",
                       times=1)

    # When two different cards arrive at once
    events = [ids("card-a"), ids("card-b")]
    for event, number in zip(events, (VISA, MASTERCARD), strict=True):
        publish("card_token_received", event_id=event, user_id=user,
                token=stripe_fake.create_card_token(number))
    rows = wait_for(*events)

    # Then both are attached, and Postgres names the same default card as Stripe
    assert {r["status"] for r in rows.values()} == {"succeeded"}, rows
    assert len(stripe_card_ids(stripe_fake, customer)) == 2
    assert pg_default(engine, user) == stripe_default(stripe_fake, customer)


def test_make_default_on_a_second_card_moves_the_default(
    register, add_card, engine, stripe_fake, ids
):
    # Given a user whose first card is the default
    user = ids("user")
    customer = register(user)
    first = add_card(user, VISA)

    # When a second card arrives with make_default
    second = add_card(user, MASTERCARD, make_default=True)

    # Then the second card is the default on Stripe and, alone, in Postgres
    card_id = second["result"]["card_id"]
    assert card_id != first["result"]["card_id"]
    assert stripe_default(stripe_fake, customer) == card_id
    defaults = [c["stripe_card_id"] for c in cards_of(engine, user) if c["is_default"]]
    assert defaults == [card_id]


# ---- changing the default and removing cards ------------------------------------------


def test_default_card_changed_switches_the_default(
    register, add_card, publish, wait_for, engine, stripe_fake, ids
):
    # Given a user with two cards, the first being the default
    user = ids("user")
    customer = register(user)
    first = add_card(user, VISA)["result"]["card_id"]
    second = add_card(user, MASTERCARD)["result"]["card_id"]
    assert stripe_default(stripe_fake, customer) == pg_default(engine, user) == first

    # When the default is changed to the second card
    event = ids("default")
    publish("default_card_changed", event_id=event, user_id=user, card_id=second)
    row = wait_for(event)[event]

    # Then Stripe and Postgres both name the second card
    assert row["status"] == "succeeded", row
    assert row["result"]["previous_default_card_id"] == first
    assert stripe_default(stripe_fake, customer) == second
    assert pg_default(engine, user) == second


def test_removing_a_non_default_card_detaches_it(
    register, add_card, publish, wait_for, engine, stripe_fake, ids
):
    # Given a user with a default card and a second card
    user = ids("user")
    customer = register(user)
    first = add_card(user, VISA)["result"]["card_id"]
    second = add_card(user, MASTERCARD)["result"]["card_id"]

    # When the second card is removed
    event = ids("remove")
    publish("card_removed", event_id=event, user_id=user, card_id=second)
    row = wait_for(event)[event]

    # Then it is gone from Stripe, marked removed in Postgres, and the default is unchanged
    assert row["status"] == "succeeded", row
    assert stripe_card_ids(stripe_fake, customer) == [first]
    removed = next(c for c in cards_of(engine, user) if c["stripe_card_id"] == second)
    assert removed["removed_at"] is not None and not removed["is_default"]
    assert stripe_default(stripe_fake, customer) == pg_default(engine, user) == first


def test_removing_the_default_card_mirrors_stripes_new_default(
    register, add_card, publish, wait_for, engine, stripe_fake, ids
):
    # Given a user with a default card and a second card
    user = ids("user")
    customer = register(user)
    first = add_card(user, VISA)["result"]["card_id"]
    second = add_card(user, MASTERCARD)["result"]["card_id"]

    # When the default card is removed
    event = ids("remove")
    publish("card_removed", event_id=event, user_id=user, card_id=first)
    row = wait_for(event)[event]

    # Then Stripe no longer lists it, and Postgres' default is whatever Stripe's is now
    assert row["status"] == "succeeded", row
    assert stripe_card_ids(stripe_fake, customer) == [second]
    new_default = stripe_default(stripe_fake, customer)
    assert pg_default(engine, user) == new_default
    assert row["result"]["default_card_id"] == new_default
    removed = next(c for c in cards_of(engine, user) if c["stripe_card_id"] == first)
    assert removed["removed_at"] is not None and not removed["is_default"]


def test_removing_the_only_card_leaves_no_default(
    register, add_card, publish, wait_for, engine, stripe_fake, ids
):
    # Given a user with a single (default) card
    user = ids("user")
    customer = register(user)
    card = add_card(user, VISA)["result"]["card_id"]

    # When it is removed
    event = ids("remove")
    publish("card_removed", event_id=event, user_id=user, card_id=card)
    row = wait_for(event)[event]

    # Then neither Stripe nor Postgres has a default card or an active card
    assert row["status"] == "succeeded", row
    assert stripe_card_ids(stripe_fake, customer) == []
    assert stripe_default(stripe_fake, customer) is None
    assert pg_default(engine, user) is None
    assert active(cards_of(engine, user)) == []


# ---- another user's card ---------------------------------------------------------------


@pytest.fixture
def two_users_with_cards(register, add_card, ids) -> dict[str, Any]:
    """Alice and Bob, registered, with one default card each."""
    alice, bob = ids("alice"), ids("bob")
    people = {}
    for user in (alice, bob):
        customer = register(user)
        people[user] = {"customer": customer, "card": add_card(user)["result"]["card_id"]}
    return {"alice": alice, "bob": bob, **people}


@pytest.mark.parametrize("message_type", ["default_card_changed", "card_removed"])
def test_another_users_card_fails_at_once_without_touching_stripe(
    message_type, two_users_with_cards, publish, wait_for, engine, stripe_fake, ids
):
    # Given Alice and Bob with a card each
    alice, bob = two_users_with_cards["alice"], two_users_with_cards["bob"]
    bobs = two_users_with_cards[bob]
    alices_customer = two_users_with_cards[alice]["customer"]
    before_bob = len(writes_to(stripe_fake, bobs["customer"]))
    before_alice = len(writes_to(stripe_fake, alices_customer))
    bob_cards = cards_of(engine, bob)

    # When Alice's message names Bob's card
    event = ids(message_type)
    started = time.monotonic()
    publish(message_type, event_id=event, user_id=alice, card_id=bobs["card"])
    row = wait_for(event, timeout=10)[event]

    # Then it fails with card_not_found on its first attempt, without waiting
    assert row["status"] == "failed", row
    assert row["error_code"] == "card_not_found"
    assert row["attempts"] == 1 and row["transient_failures"] == 0
    assert time.monotonic() - started < 5
    # and nothing was written on Stripe for either customer, nor changed in Postgres
    assert len(writes_to(stripe_fake, bobs["customer"])) == before_bob
    assert len(writes_to(stripe_fake, alices_customer)) == before_alice
    assert stripe_card_ids(stripe_fake, bobs["customer"]) == [bobs["card"]]
    assert stripe_default(stripe_fake, bobs["customer"]) == bobs["card"]
    assert cards_of(engine, bob) == bob_cards
