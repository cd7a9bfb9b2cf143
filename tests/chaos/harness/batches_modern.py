"""Batches that mix the legacy messages with the modern ones (PaymentMethods, PaymentIntents
that may need authentication, refunds), for two queues: one whose workers charge through
the Charges API, one through PaymentIntents (the default)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, text

from stripe_fake import FakeStripe
from tests.chaos.harness.batches import CARD_NUMBERS, DECLINED, DECLINED_AT_CHARGE, OK, Batch

# Needs 3-D Secure on every payment: off-session, Stripe answers authentication_required.
THREE_D_SECURE = "4000002760003184"
ACTION = {("action_required", "authentication_required")}
NOT_REFUNDABLE = {("failed", "charge_not_refundable")}
EXCEEDS = {("failed", "refund_exceeds_charge")}


@dataclass
class Mixed:
    """One batch per queue, and the charge events that will wait for authentication."""

    legacy: Batch = field(default_factory=Batch)  # PAYWORKER_CHARGE_API=charges
    modern: Batch = field(default_factory=Batch)  # PaymentIntents
    awaiting_customer: list[str] = field(default_factory=list)

    @property
    def user_ids(self) -> set[str]:
        return self.legacy.user_ids | self.modern.user_ids


def _legacy_user(batch: Batch, fake: FakeStripe, user: str, i: int) -> None:
    """Registration, a token card (every 7th twice: one attach, one duplicate), two Charges
    API charges; every 5th user's card is declined at charge time."""
    declined = i % 5 == 2
    number = DECLINED_AT_CHARGE if declined else CARD_NUMBERS[i % len(CARD_NUMBERS)]
    batch.add("user_registered", OK, event_id=f"{user}-reg", user_id=user,
              email=f"{user}@example.com")
    batch.add("card_token_received", OK, event_id=f"{user}-card", user_id=user,
              token=fake.create_card_token(number))
    if i % 7 == 3:
        batch.add("card_token_received", OK, event_id=f"{user}-card-again", user_id=user,
                  token=fake.create_card_token(number))
    for c in range(2):
        batch.add("charge_requested", DECLINED if declined else OK, event_id=f"{user}-chg{c}",
                  user_id=user, amount=1500 + 10 * c + i, currency="usd")


def _modern_user(mixed: Mixed, fake: FakeStripe, user: str, i: int) -> None:
    """Registration, a PaymentMethod card (every 4th user sends a token of the same card
    too: whichever comes second is a duplicate; every 6th sends a token card only, charged
    through a PaymentIntent), two PaymentIntent charges. Every 7th user's card is declined at
    charge time; users 1 and 12 have a card that needs 3-D Secure."""
    batch = mixed.modern
    declined, secure = i % 7 == 5, i in (1, 12)
    number = CARD_NUMBERS[(i + 5) % len(CARD_NUMBERS)]
    if declined:
        number = DECLINED_AT_CHARGE
    if secure:
        number = THREE_D_SECURE
    batch.add("user_registered", OK, event_id=f"{user}-reg", user_id=user,
              email=f"{user}@example.com")
    if i % 6 == 4:
        batch.add("card_token_received", OK, event_id=f"{user}-card", user_id=user,
                  token=fake.create_card_token(number))
    else:
        batch.add("payment_method_received", OK, event_id=f"{user}-pm", user_id=user,
                  payment_method=fake.create_payment_method(number), make_default=i % 3 == 0)
        if i % 4 == 2:
            batch.add("card_token_received", OK, event_id=f"{user}-card-too", user_id=user,
                      token=fake.create_card_token(number))
    for c in range(2):
        outcome = ACTION if secure else DECLINED if declined else OK
        event = batch.add("charge_requested", outcome, event_id=f"{user}-chg{c}", user_id=user,
                          amount=2000 + 10 * c + i, currency="eur")
        if secure:
            mixed.awaiting_customer.append(event)


@dataclass(frozen=True)
class TwoCardUser:
    """A registered user with two PaymentMethod cards: `first` (default) and `second`."""

    user_id: str
    first: str
    second: str


def setup_modern(tag: str, users: int, fake: FakeStripe) -> Batch:
    """Users with two PaymentMethod cards each, the first one the default."""
    batch = Batch()
    for i in range(users):
        user = f"{tag}-u{i}"
        batch.add("user_registered", OK, event_id=f"{user}-reg", user_id=user,
                  email=f"{user}@example.com")
        for k in range(2):
            number = CARD_NUMBERS[(i + k) % len(CARD_NUMBERS)]
            batch.add("payment_method_received", OK, event_id=f"{user}-pm{k}", user_id=user,
                      payment_method=fake.create_payment_method(number))
    return batch


def two_card_users(engine: Engine, user_ids: set[str]) -> list[TwoCardUser]:
    out = []
    with engine.connect() as conn:
        for user in sorted(user_ids):
            cards = conn.execute(
                text("SELECT stripe_card_id, is_default FROM cards WHERE user_id = :u"
                     " AND removed_at IS NULL ORDER BY is_default DESC, created_at"),
                {"u": user},
            ).all()
            assert len(cards) == 2 and cards[0][1], (user, cards)
            out.append(TwoCardUser(user, cards[0][0], cards[1][0]))
    return out


def mixed_modern_batch(tag: str, fake: FakeStripe, prepared: list[TwoCardUser],
                       legacy_users: int, modern_users: int, seed: int) -> Mixed:
    """Phase one: new legacy users (Charges API queue), new modern users (PaymentIntents
    queue), and for each prepared user a default switch to the second PaymentMethod, the
    removal (detach) of the first, and two charges named on the second. Each queue's
    messages shuffled: charges may arrive before their card and wait for it."""
    rng = random.Random(seed)
    mixed = Mixed()
    for i in range(legacy_users):
        _legacy_user(mixed.legacy, fake, f"{tag}-l{i}", i)
    for i in range(modern_users):
        _modern_user(mixed, fake, f"{tag}-m{i}", i)
    for p in prepared:
        mixed.modern.add("default_card_changed", OK, event_id=f"{p.user_id}-{tag}-default",
                         user_id=p.user_id, card_id=p.second)
        mixed.modern.add("card_removed", OK, event_id=f"{p.user_id}-{tag}-remove",
                         user_id=p.user_id, card_id=p.first)
        for c in range(2):
            mixed.modern.add("charge_requested", OK, event_id=f"{p.user_id}-{tag}-chg{c}",
                             user_id=p.user_id, amount=2500 + c, currency="usd",
                             card_id=p.second)
    rng.shuffle(mixed.legacy.messages)
    rng.shuffle(mixed.modern.messages)
    return mixed


def refund_batch(batch: Batch, rows: dict[str, dict[str, Any]], seed: int) -> Batch:
    """Phase two, for one queue's charges once they settled: the first charge of each user
    refunded fully, or partly (300) and then fully at once (the second may find nothing
    left: `charge_not_refundable`); the second charge asked for more than it holds
    (`refund_exceeds_charge`); a declined charge refunded (`charge_not_refundable`)."""
    rng = random.Random(seed)
    refunds = Batch()
    charges = [(t, k) for t, k in batch.messages if t == "charge_requested"]
    for n, (_, kwargs) in enumerate(sorted(charges, key=lambda m: m[1]["event_id"])):
        event, user = kwargs["event_id"], kwargs["user_id"]
        status = rows[event]["status"]
        if status == "failed":
            if n % 3 == 0:
                refunds.add("refund_requested", NOT_REFUNDABLE, event_id=f"{event}-rf",
                            user_id=user, charge_event_id=event)
            continue
        if status != "succeeded":
            continue
        if event.endswith("chg1"):
            refunds.add("refund_requested", EXCEEDS, event_id=f"{event}-rf-over", user_id=user,
                        charge_event_id=event, amount=kwargs["amount"] + 1)
        elif n % 2:
            refunds.add("refund_requested", OK, event_id=f"{event}-rf", user_id=user,
                        charge_event_id=event, reason="requested_by_customer")
        else:
            refunds.add("refund_requested", OK | NOT_REFUNDABLE, event_id=f"{event}-rf-part",
                        user_id=user, charge_event_id=event, amount=300,
                        metadata={"ticket": f"T-{n}"})
            refunds.add("refund_requested", OK, event_id=f"{event}-rf-rest", user_id=user,
                        charge_event_id=event, reason="duplicate")
    rng.shuffle(refunds.messages)
    return refunds
