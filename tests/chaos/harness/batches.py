"""Batches of mixed events for the chaos scenarios, and what each event must end as."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, text

from stripe_fake import FakeStripe

VISA = "4242424242424242"
# Attaches fine, then every charge on it is declined (localstripe).
DECLINED_AT_CHARGE = "4000000000000341"
# 16-digit test numbers with distinct fingerprints that localstripe attaches and charges.
CARD_NUMBERS = (
    "4242424242424242", "4000056655665556", "5555555555554444", "2223003122003222",
    "5200828282828210", "5105105105105100", "6011111111111117", "3056930009020004",
    "3566002020360505", "6200000000000005", "4012888888881881", "6011000990139424",
    "3566111111111113",
)


@dataclass
class Batch:
    """Messages to publish, and what each event may end as."""

    messages: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # event_id -> acceptable (status, error_code) outcomes
    expected: dict[str, set[tuple[str, str | None]]] = field(default_factory=dict)
    user_ids: set[str] = field(default_factory=set)

    def add(self, message_type: str, outcomes: set[tuple[str, str | None]],
            **kwargs: Any) -> str:
        self.messages.append((message_type, kwargs))
        self.expected[kwargs["event_id"]] = outcomes
        self.user_ids.add(kwargs["user_id"])
        return str(kwargs["event_id"])

    @property
    def event_ids(self) -> list[str]:
        return list(self.expected)

    def types(self) -> Counter[str]:
        return Counter(t for t, _ in self.messages)

    def wrong_outcomes(self, rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
        wrong = {}
        for event_id, outcomes in self.expected.items():
            row = rows.get(event_id)
            got = (row["status"], row["error_code"]) if row else ("missing", None)
            if got not in outcomes:
                wrong[event_id] = {"got": got, "expected": sorted(outcomes, key=str),
                                   "last_error": row and row.get("last_error")}
        return wrong


OK = {("succeeded", None)}
DECLINED = {("failed", "card_declined")}


@dataclass
class PreparedUser:
    """A registered user with two active cards: `first` (default) and `second`."""

    user_id: str
    customer_id: str
    first: str
    second: str


def setup_batch(tag: str, users: int, fake: FakeStripe) -> Batch:
    """Registrations first, then a card each, then charges (for prepared users, or to run
    before their own registrations are done: out of order messages wait in the ledger)."""
    batch = Batch()
    for i in range(users):
        user = f"{tag}-u{i}"
        batch.add("user_registered", OK, event_id=f"{user}-reg", user_id=user,
                  email=f"{user}@example.com", name=f"User {i}")
    for i in range(users):
        user = f"{tag}-u{i}"
        batch.add("card_token_received", OK, event_id=f"{user}-card1", user_id=user,
                  token=fake.create_card_token(CARD_NUMBERS[i % len(CARD_NUMBERS)]))
        batch.add("card_token_received", OK, event_id=f"{user}-card2", user_id=user,
                  token=fake.create_card_token(CARD_NUMBERS[(i + 1) % len(CARD_NUMBERS)]))
    return batch


def ordered_batch(tag: str, users: int, charges_per_user: int, fake: FakeStripe) -> Batch:
    """Registrations first, then one card each, then the charges, in that order (charges
    that overtake their card wait for it in the ledger). Every 10th user's card is declined
    at charge time, so failures are part of the mix."""
    batch = Batch()
    for i in range(users):
        user = f"{tag}-u{i}"
        batch.add("user_registered", OK, event_id=f"{user}-reg", user_id=user,
                  email=f"{user}@example.com")
    for i in range(users):
        user = f"{tag}-u{i}"
        number = DECLINED_AT_CHARGE if i % 10 == 7 else CARD_NUMBERS[i % len(CARD_NUMBERS)]
        batch.add("card_token_received", OK, event_id=f"{user}-card", user_id=user,
                  token=fake.create_card_token(number))
    for c in range(charges_per_user):
        for i in range(users):
            user = f"{tag}-u{i}"
            batch.add("charge_requested", DECLINED if i % 10 == 7 else OK,
                      event_id=f"{user}-chg{c}", user_id=user, amount=900 + 10 * c + i,
                      currency="usd")
    return batch


def mixed_batch(tag: str, fake: FakeStripe, prepared: list[PreparedUser],
                new_users: int, seed: int) -> Batch:
    """A mix of every message type, with known right outcomes:

    - new users: registration, a card (every 7th user sends the same card twice, with two
      tokens: one attach, one `duplicate`), every 9th user's card is declined at charge
      time, and two charges on the default card (three for every 5th user);
    - prepared users (two cards): switch the default to the second card, remove the first
      card, and two charges named on the second card (no race with the removal).

    Messages are shuffled: charges may arrive before their user's card or registration and
    must wait for it in the ledger."""
    rng = random.Random(seed)
    batch = Batch()
    for i in range(new_users):
        user = f"{tag}-n{i}"
        declined = i % 9 == 4
        number = DECLINED_AT_CHARGE if declined else CARD_NUMBERS[i % len(CARD_NUMBERS)]
        batch.add("user_registered", OK, event_id=f"{user}-reg", user_id=user,
                  email=f"{user}@example.com")
        batch.add("card_token_received", OK, event_id=f"{user}-card", user_id=user,
                  token=fake.create_card_token(number), make_default=(i % 3 == 0))
        if i % 7 == 3:
            batch.add("card_token_received", OK, event_id=f"{user}-card-again", user_id=user,
                      token=fake.create_card_token(number))
        for c in range(3 if i % 5 == 0 else 2):
            batch.add("charge_requested", DECLINED if declined else OK,
                      event_id=f"{user}-chg{c}", user_id=user, amount=1000 + 37 * c + i,
                      currency=rng.choice(["usd", "eur", "gbp"]),
                      description=f"order {i}/{c}")
    for p in prepared:
        batch.add("default_card_changed", OK, event_id=f"{p.user_id}-{tag}-default",
                  user_id=p.user_id, card_id=p.second)
        batch.add("card_removed", OK, event_id=f"{p.user_id}-{tag}-remove",
                  user_id=p.user_id, card_id=p.first)
        for c in range(2):
            batch.add("charge_requested", OK, event_id=f"{p.user_id}-{tag}-chg{c}",
                      user_id=p.user_id, amount=2500 + c, currency="usd", card_id=p.second)
    rng.shuffle(batch.messages)
    return batch


def prepared_users(engine: Engine, user_ids: Iterable[str]) -> list[PreparedUser]:
    """Users of setup_batch once it finished: their customer and two cards, default first."""
    out = []
    with engine.connect() as conn:
        for user in sorted(user_ids):
            customer = conn.execute(
                text("SELECT stripe_customer_id FROM customers WHERE user_id = :u"), {"u": user}
            ).scalar_one()
            cards = conn.execute(
                text("SELECT stripe_card_id, is_default FROM cards WHERE user_id = :u"
                     " AND removed_at IS NULL ORDER BY is_default DESC, created_at"),
                {"u": user},
            ).all()
            assert len(cards) == 2 and cards[0][1], (user, cards)
            out.append(PreparedUser(user, customer, cards[0][0], cards[1][0]))
    return out
