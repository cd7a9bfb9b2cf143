"""Does Postgres agree with Stripe? What the Stripe fake and the database hold for one event
or one user, and the object-by-object check of a whole batch."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, text

from stripe_fake import FakeStripe

# ---- one event, one user -------------------------------------------------------------------


def stripe_customers_of(fake: FakeStripe, user: str) -> list[dict[str, Any]]:
    return [c for c in fake.list_customers() if (c.get("metadata") or {}).get("user_id") == user]


def cards_of_event(fake: FakeStripe, customer: str, event_id: str) -> list[dict[str, Any]]:
    return [c for c in fake.list_cards(customer)
            if (c.get("metadata") or {}).get("event_id") == event_id]


def charges_of_event(fake: FakeStripe, customer: str, event_id: str) -> list[dict[str, Any]]:
    return [c for c in fake.list_charges(customer)
            if (c.get("metadata") or {}).get("event_id") == event_id]


def posts_with_key(fake: FakeStripe, path: str, key: str) -> list[dict[str, Any]]:
    """The POSTs to `path` the fake logged with this idempotency key (replays included)."""
    return [r for r in fake.requests(method="POST", path=path)
            if r.get("idempotency_key") == key]


def pg_cards(engine: Engine, user: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(
            text("SELECT * FROM cards WHERE user_id = :u ORDER BY created_at"), {"u": user}
        ).mappings()]


def pg_charge(engine: Engine, event_id: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT * FROM charges WHERE event_id = :e"), {"e": event_id}
        ).mappings().one_or_none()
        return dict(row) if row else None


def pg_default(engine: Engine, user: str) -> str | None:
    defaults = [c["stripe_card_id"] for c in pg_cards(engine, user)
                if c["is_default"] and c["removed_at"] is None]
    assert len(defaults) <= 1, defaults
    return defaults[0] if defaults else None


# ---- a whole batch, object by object -------------------------------------------------------


@dataclass
class WorldReport:
    users: int = 0
    stripe_customers: int = 0
    stripe_cards: int = 0
    stripe_charges: int = 0
    duplicates: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.duplicates and not self.mismatches

    def summary(self) -> str:
        head = (f"users={self.users} stripe_customers={self.stripe_customers}"
                f" stripe_cards={self.stripe_cards} stripe_charges={self.stripe_charges}"
                f" duplicates={len(self.duplicates)} mismatches={len(self.mismatches)}")
        details = self.duplicates[:20] + self.mismatches[:20]
        return head + "".join(f"\n  {d}" for d in details)


def _rows(engine: Engine, sql: str, users: list[str]) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(text(sql), {"users": users}).mappings()]


def check_world(engine: Engine, fake: FakeStripe, user_ids: Iterable[str]) -> WorldReport:
    """Compare Postgres (customers, cards, charges, ledger) with what the Stripe fake holds,
    object by object, for the given users. Stripe is read through the fake's control reads,
    which bypass faults and the request log. Returns duplicates (two Stripe objects for one
    intent) and mismatches (an object on one side only, or disagreeing fields)."""
    users = sorted(set(user_ids))
    wanted = set(users)
    report = WorldReport(users=len(users))
    dup, bad = report.duplicates, report.mismatches

    # Customers: one per user on Stripe, and the customers row points at it.
    stripe_customers: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for customer in fake.list_customers():
        owner = (customer.get("metadata") or {}).get("user_id")
        if owner in wanted:
            stripe_customers[owner].append(customer)
    report.stripe_customers = sum(len(v) for v in stripe_customers.values())
    rows = {r["user_id"]: r for r in _rows(
        engine, "SELECT * FROM customers WHERE user_id = ANY(:users)", users)}
    for user, found in stripe_customers.items():
        if len(found) > 1:
            dup.append(f"user {user}: {len(found)} Stripe customers {[c['id'] for c in found]}")
        row = rows.get(user)
        if row is None:
            bad.append(f"user {user}: Stripe customer {found[0]['id']} has no customers row")
    for user, row in rows.items():
        ids = [c["id"] for c in stripe_customers.get(user, [])]
        if row["stripe_customer_id"] not in ids:
            bad.append(f"user {user}: customers row {row['stripe_customer_id']} not on Stripe")
            continue
        meta = next(c for c in stripe_customers[user] if c["id"] == row["stripe_customer_id"])
        if meta["metadata"].get("event_id") != row["event_id"]:
            bad.append(f"user {user}: customer metadata event_id {meta['metadata']}"
                       f" != row event_id {row['event_id']}")

    # Cards and charges, for every Stripe customer of these users (orphans included).
    card_rows = {r["stripe_card_id"]: r for r in _rows(
        engine, "SELECT * FROM cards WHERE user_id = ANY(:users)", users)}
    charge_rows = _rows(engine, "SELECT * FROM charges WHERE user_id = ANY(:users)", users)
    stripe_cards: dict[str, dict[str, Any]] = {}
    stripe_charges: dict[str, dict[str, Any]] = {}
    defaults: dict[str, str | None] = {}
    for user, found in stripe_customers.items():
        for customer in found:
            defaults[user] = customer.get("default_source") if len(found) == 1 else None
            for card in fake.list_cards(customer["id"]):
                stripe_cards[card["id"]] = {**card, "_user": user}
            for charge in fake.list_charges(customer["id"]):
                stripe_charges[charge["id"]] = {**charge, "_user": user}
    report.stripe_cards = len(stripe_cards)
    report.stripe_charges = len(stripe_charges)

    by_event: dict[str, list[str]] = defaultdict(list)
    by_fingerprint: dict[tuple[str, str], list[str]] = defaultdict(list)
    for card_id, card in stripe_cards.items():
        by_event[(card.get("metadata") or {}).get("event_id", "?")].append(card_id)
        by_fingerprint[(card["_user"], card.get("fingerprint", "?"))].append(card_id)
        row = card_rows.get(card_id)
        if row is None:
            bad.append(f"Stripe card {card_id} of {card['_user']} has no cards row")
        elif row["removed_at"] is not None:
            bad.append(f"card {card_id}: removed in Postgres but still on Stripe")
        elif row["event_id"] != card["metadata"].get("event_id"):
            bad.append(f"card {card_id}: row event {row['event_id']} != Stripe metadata"
                       f" {card['metadata']}")
        elif row["fingerprint"] != card.get("fingerprint"):
            bad.append(f"card {card_id}: fingerprint differs")
    for event, cards in by_event.items():
        if len(cards) > 1:
            dup.append(f"event {event}: {len(cards)} Stripe cards {cards}")
    for (user, _), cards in by_fingerprint.items():
        if len(cards) > 1:
            dup.append(f"user {user}: same card attached {len(cards)} times {cards}")
    active_default: dict[str, str] = {}
    for card_id, row in card_rows.items():
        if row["removed_at"] is None:
            if card_id not in stripe_cards:
                bad.append(f"card {card_id}: active in Postgres but not on Stripe")
            if row["is_default"]:
                active_default[row["user_id"]] = card_id
    for user in stripe_customers:
        if defaults.get(user) != active_default.get(user):
            bad.append(f"user {user}: Stripe default {defaults.get(user)}"
                       f" != Postgres default {active_default.get(user)}")

    charges_by_event: dict[str, list[str]] = defaultdict(list)
    for charge_id, charge in stripe_charges.items():
        charges_by_event[(charge.get("metadata") or {}).get("event_id", "?")].append(charge_id)
    for event, charges in charges_by_event.items():
        if len(charges) > 1:
            dup.append(f"event {event}: {len(charges)} Stripe charges {charges}")
    rows_by_charge: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in charge_rows:
        if row["status"] == "pending":
            bad.append(f"charge event {row['event_id']}: still pending")
        if row["stripe_charge_id"] is None:
            if charges_by_event.get(row["event_id"]):
                bad.append(f"charge event {row['event_id']}: Stripe has"
                           f" {charges_by_event[row['event_id']]}, the row has no charge id")
            continue
        rows_by_charge[row["stripe_charge_id"]].append(row)
        charge = stripe_charges.get(row["stripe_charge_id"])
        if charge is None:
            bad.append(f"charge event {row['event_id']}: {row['stripe_charge_id']} not on Stripe")
            continue
        if charge["metadata"].get("event_id") != row["event_id"]:
            bad.append(f"charge {charge['id']}: metadata {charge['metadata']} != row event"
                       f" {row['event_id']}")
        if charge["status"] != row["status"] or charge["amount"] != row["amount"]:
            bad.append(f"charge {charge['id']}: Stripe {charge['status']}/{charge['amount']}"
                       f" != row {row['status']}/{row['amount']}")
        # localstripe names the charged card `payment_method` (Stripe: `source.id`)
        charged = charge.get("payment_method") or (charge.get("source") or {}).get("id")
        if charged != row["stripe_card_id"]:
            bad.append(f"charge {charge['id']}: charged card {charged} != row's"
                       f" {row['stripe_card_id']}")
    for charge_id in stripe_charges:
        count = len(rows_by_charge.get(charge_id, []))
        if count != 1:
            bad.append(f"Stripe charge {charge_id}: {count} charges rows")

    # The ledger: a succeeded charge event names the charge its row holds.
    events = _rows(engine, "SELECT event_id, type, status, result FROM payment_events"
                           " WHERE user_id = ANY(:users)", users)
    by_id = {r["event_id"]: r for r in charge_rows}
    for event in events:
        if event["type"] == "charge_requested" and event["status"] == "succeeded":
            row = by_id.get(event["event_id"])
            got = (event["result"] or {}).get("charge_id")
            if row is None or row["stripe_charge_id"] != got:
                bad.append(f"event {event['event_id']}: result charge {got} != row"
                           f" {row and row['stripe_charge_id']}")
    return report
