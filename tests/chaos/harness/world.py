"""Does Postgres agree with Stripe? What the Stripe fake and the database hold for one event
or one user, and the object-by-object check of a whole batch: customers here, cards
(legacy sources and PaymentMethods) in world_cards.py, charges (Charges and PaymentIntents)
in world_charges.py, refunds in world_refunds.py."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, text

from stripe_fake import FakeStripe
from tests.chaos.harness.world_cards import check_cards
from tests.chaos.harness.world_charges import check_charges
from tests.chaos.harness.world_refunds import check_refunds

# ---- one event, one user -------------------------------------------------------------------


def stripe_customers_of(fake: FakeStripe, user: str) -> list[dict[str, Any]]:
    return [c for c in fake.list_customers() if (c.get("metadata") or {}).get("user_id") == user]


def _of_event(objects: list[dict[str, Any]], event_id: str) -> list[dict[str, Any]]:
    return [o for o in objects if (o.get("metadata") or {}).get("event_id") == event_id]


def cards_of_event(fake: FakeStripe, customer: str, event_id: str) -> list[dict[str, Any]]:
    return _of_event(fake.list_cards(customer), event_id)


def charges_of_event(fake: FakeStripe, customer: str, event_id: str) -> list[dict[str, Any]]:
    """Stripe charges with the event's metadata (a PaymentIntent's charges copy it)."""
    return _of_event(fake.list_charges(customer), event_id)


def intents_of_event(fake: FakeStripe, customer: str, event_id: str) -> list[dict[str, Any]]:
    """The customer's PaymentIntents carrying the event's metadata."""
    return _of_event(fake.list_payment_intents(customer), event_id)


def refunds_of_event(fake: FakeStripe, charge_id: str, event_id: str) -> list[dict[str, Any]]:
    """The charge's Stripe refunds carrying the refund event's metadata."""
    return _of_event(fake.list_refunds(charge=charge_id), event_id)


def payment_methods_of(fake: FakeStripe, customer: str) -> list[dict[str, Any]]:
    """The PaymentMethods (pm_...) attached to the customer; legacy cards left out."""
    return [p for p in fake.list_payment_methods(customer) if p["id"].startswith("pm_")]


def posts_with_key(fake: FakeStripe, path: str, key: str) -> list[dict[str, Any]]:
    """The POSTs to `path` the fake logged with this idempotency key (replays included)."""
    return [r for r in fake.requests(method="POST", path=path)
            if r.get("idempotency_key") == key]


def attach_keys(fake: FakeStripe, pm_id: str) -> set[str | None]:
    """The idempotency keys of the PaymentMethod's attach POSTs that Stripe did not refuse
    (a 400: attached already). One key means at most one attach ran: Stripe replays the
    others. The request log cannot tell more: a request whose answer was held when the
    worker died is logged 499, whether it ran or not."""
    return {r["idempotency_key"]
            for r in fake.requests(method="POST", path=f"/v1/payment_methods/{pm_id}/attach")
            if r["status"] != 400}


def pg_cards(engine: Engine, user: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(
            text("SELECT * FROM cards WHERE user_id = :u ORDER BY created_at"), {"u": user}
        ).mappings()]


def _one(engine: Engine, sql: str, event_id: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(text(sql), {"e": event_id}).mappings().one_or_none()
        return dict(row) if row else None


def pg_charge(engine: Engine, event_id: str) -> dict[str, Any] | None:
    return _one(engine, "SELECT * FROM charges WHERE event_id = :e", event_id)


def pg_refund(engine: Engine, event_id: str) -> dict[str, Any] | None:
    return _one(engine, "SELECT * FROM refunds WHERE event_id = :e", event_id)


def pg_default(engine: Engine, user: str) -> str | None:
    defaults = [c["stripe_card_id"] for c in pg_cards(engine, user)
                if c["is_default"] and c["removed_at"] is None]
    assert len(defaults) <= 1, defaults
    return defaults[0] if defaults else None


def stripe_default(customer: dict[str, Any]) -> str | None:
    """The card Stripe charges by default: the invoice default PaymentMethod, else the
    legacy default source (tasks/gateway/legacy.py default_card reads it the same way)."""
    invoice = (customer.get("invoice_settings") or {}).get("default_payment_method")
    return invoice or customer.get("default_source")


# ---- a whole batch, object by object -------------------------------------------------------


@dataclass
class WorldReport:
    users: int = 0
    stripe_customers: int = 0
    stripe_cards: int = 0
    stripe_payment_methods: int = 0
    stripe_charges: int = 0
    stripe_payment_intents: int = 0
    stripe_refunds: int = 0
    duplicates: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.duplicates and not self.mismatches

    def summary(self) -> str:
        head = (f"users={self.users} stripe_customers={self.stripe_customers}"
                f" stripe_cards={self.stripe_cards}"
                f" stripe_payment_methods={self.stripe_payment_methods}"
                f" stripe_charges={self.stripe_charges}"
                f" stripe_payment_intents={self.stripe_payment_intents}"
                f" stripe_refunds={self.stripe_refunds}"
                f" duplicates={len(self.duplicates)} mismatches={len(self.mismatches)}")
        details = self.duplicates[:20] + self.mismatches[:20]
        return head + "".join(f"\n  {d}" for d in details)


@dataclass
class World:
    """Both sides for a set of users: Stripe's objects (each tagged with its `_user`) read
    through the fake's control reads (no faults, not logged), and Postgres's rows."""

    engine: Engine
    fake: FakeStripe
    users: list[str]
    report: WorldReport
    customers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    cards: dict[str, dict[str, Any]] = field(default_factory=dict)
    payment_methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    charges: dict[str, dict[str, Any]] = field(default_factory=dict)
    intents: dict[str, dict[str, Any]] = field(default_factory=dict)
    defaults: dict[str, str | None] = field(default_factory=dict)

    def rows(self, sql: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(text(sql), {"users": self.users}).mappings()]

    def duplicate(self, what: str) -> None:
        self.report.duplicates.append(what)

    def mismatch(self, what: str) -> None:
        self.report.mismatches.append(what)


def _read_stripe(world: World) -> None:
    wanted = set(world.users)
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for customer in world.fake.list_customers():
        owner = (customer.get("metadata") or {}).get("user_id")
        if owner in wanted:
            found[owner].append(customer)
    world.customers = dict(found)
    fake = world.fake
    for user, customers in found.items():
        world.defaults[user] = stripe_default(customers[0]) if len(customers) == 1 else None
        for customer in customers:  # orphans included
            for card in fake.list_cards(customer["id"]):
                world.cards[card["id"]] = {**card, "_user": user}
            for pm in payment_methods_of(fake, customer["id"]):
                world.payment_methods[pm["id"]] = {**pm, "_user": user}
            for charge in fake.list_charges(customer["id"]):
                world.charges[charge["id"]] = {**charge, "_user": user}
            for intent in fake.list_payment_intents(customer["id"]):
                world.intents[intent["id"]] = {**intent, "_user": user}


def _check_customers(world: World) -> None:
    """One Stripe customer per user, and the customers row points at it."""
    rows = {r["user_id"]: r for r in world.rows(
        "SELECT * FROM customers WHERE user_id = ANY(:users)")}
    for user, found in world.customers.items():
        if len(found) > 1:
            world.duplicate(f"user {user}: {len(found)} Stripe customers"
                            f" {[c['id'] for c in found]}")
        if user not in rows:
            world.mismatch(f"user {user}: Stripe customer {found[0]['id']} has no customers row")
    for user, row in rows.items():
        by_id = {c["id"]: c for c in world.customers.get(user, [])}
        customer = by_id.get(row["stripe_customer_id"])
        if customer is None:
            world.mismatch(f"user {user}: customers row {row['stripe_customer_id']} not on Stripe")
        elif customer["metadata"].get("event_id") != row["event_id"]:
            world.mismatch(f"user {user}: customer metadata event_id {customer['metadata']}"
                           f" != row event_id {row['event_id']}")


def check_world(engine: Engine, fake: FakeStripe, user_ids: Iterable[str]) -> WorldReport:
    """Compare Postgres (customers, cards, charges, refunds, ledger) with what the Stripe fake
    holds, object by object, for the given users. Returns duplicates (two Stripe objects or
    effects for one message) and mismatches (an object on one side only, or disagreeing
    fields)."""
    users = sorted(set(user_ids))
    world = World(engine, fake, users, WorldReport(users=len(users)))
    _read_stripe(world)
    report = world.report
    report.stripe_customers = sum(len(v) for v in world.customers.values())
    report.stripe_cards = len(world.cards)
    report.stripe_payment_methods = len(world.payment_methods)
    report.stripe_charges = len(world.charges)
    report.stripe_payment_intents = len(world.intents)
    _check_customers(world)
    check_cards(world)
    check_charges(world)
    check_refunds(world)
    return report
