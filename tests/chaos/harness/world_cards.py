"""The world check's cards: every card the users' Stripe customers hold, legacy sources
(card_...) and PaymentMethods (pm_...) alike, has one active cards row of the right kind,
and the other way round; one card per fingerprint and user across both kinds; one attach
key per PaymentMethod; the same default on both sides."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.chaos.harness.world import World


def _fingerprint(card: dict[str, Any]) -> str:
    """A source has it on top, a PaymentMethod under `card`."""
    return str(card.get("fingerprint") or (card.get("card") or {}).get("fingerprint") or "?")


def _attach_keys_by_pm(world: World) -> dict[str, set[str | None]]:
    """Per PaymentMethod, the idempotency keys of the attach POSTs Stripe did not refuse,
    in the request log (what is left of it: tests clear it before a storm). Two keys: two
    attaches may have run (world.attach_keys)."""
    keys: dict[str, set[str | None]] = defaultdict(set)
    for r in world.fake.requests(method="POST", path_prefix="/v1/payment_methods/"):
        parts = r["path"].split("/")
        if len(parts) == 5 and parts[4] == "attach" and r["status"] != 400:
            keys[parts[3]].add(r["idempotency_key"])
    return keys


def _check_stripe_side(world: World, rows: dict[str, dict[str, Any]]) -> None:
    by_event: dict[str, list[str]] = defaultdict(list)
    by_fingerprint: dict[tuple[str, str], list[str]] = defaultdict(list)
    on_stripe = {**world.cards, **world.payment_methods}
    for card_id, card in on_stripe.items():
        kind = "payment_method" if card_id.startswith("pm_") else "source"
        if kind == "source":  # a PaymentMethod is attached as the app made it: no metadata
            by_event[(card.get("metadata") or {}).get("event_id", "?")].append(card_id)
        by_fingerprint[(card["_user"], _fingerprint(card))].append(card_id)
        row = rows.get(card_id)
        if row is None:
            world.mismatch(f"Stripe card {card_id} of {card['_user']} has no cards row")
        elif row["removed_at"] is not None:
            world.mismatch(f"card {card_id}: removed in Postgres but still on Stripe")
        elif row["kind"] != kind:
            world.mismatch(f"card {card_id}: row kind {row['kind']} != {kind}")
        elif row["user_id"] != card["_user"]:
            world.mismatch(f"card {card_id}: row of {row['user_id']}, on Stripe {card['_user']}'s")
        elif kind == "source" and row["event_id"] != card["metadata"].get("event_id"):
            world.mismatch(f"card {card_id}: row event {row['event_id']} != Stripe metadata"
                           f" {card['metadata']}")
        elif row["fingerprint"] != _fingerprint(card):
            world.mismatch(f"card {card_id}: fingerprint differs")
    for event, ids in by_event.items():
        if len(ids) > 1:
            world.duplicate(f"event {event}: {len(ids)} Stripe cards {ids}")
    for (user, _), ids in by_fingerprint.items():
        if len(ids) > 1:
            world.duplicate(f"user {user}: same card attached {len(ids)} times {ids}")
    for pm_id, keys in _attach_keys_by_pm(world).items():
        if len(keys) > 1 and pm_id in rows:
            world.duplicate(f"PaymentMethod {pm_id}: attached under {len(keys)} keys {keys}")


def check_cards(world: World) -> None:
    rows = {r["stripe_card_id"]: r for r in world.rows(
        "SELECT * FROM cards WHERE user_id = ANY(:users)")}
    _check_stripe_side(world, rows)
    on_stripe = world.cards.keys() | world.payment_methods.keys()
    active_default: dict[str, str] = {}
    for card_id, row in rows.items():
        if row["removed_at"] is None:
            if card_id not in on_stripe:
                world.mismatch(f"card {card_id}: active in Postgres but not on Stripe")
            if row["is_default"]:
                active_default[row["user_id"]] = card_id
    for user in world.customers:
        if world.defaults.get(user) != active_default.get(user):
            world.mismatch(f"user {user}: Stripe default {world.defaults.get(user)}"
                           f" != Postgres default {active_default.get(user)}")
