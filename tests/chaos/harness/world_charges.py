"""The world check's charges. A charges row without `payment_intent_id` was made through
the Charges API: exactly one Stripe charge with its event's metadata, the one the row names.
A row with `payment_intent_id` was made through a PaymentIntent: exactly one PaymentIntent
with its event's metadata (a second one would be a second payment), whose status, amount,
card and latest charge agree with the row; the PaymentIntent's charges (a declined or
unauthenticated attempt leaves a failed one) belong to it, not to the row. The ledger: a
succeeded charge event names the row's charge, an action_required one the row's
PaymentIntent, and only a requires_action row is action_required."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.chaos.harness.world import World

# PaymentIntent statuses a charges row's status may stand for. A row that waits for the
# customer: off-session, Stripe answered 402 authentication_required and left the
# PaymentIntent in requires_payment_method; on-session it is requires_action. A failed row:
# declined (requires_payment_method), or canceled once the wait expired.
INTENT_STATUSES = {
    "succeeded": {"succeeded"},
    "requires_action": {"requires_action", "requires_payment_method", "requires_confirmation"},
    "failed": {"requires_payment_method", "canceled"},
    "canceled": {"canceled"},
}


def _event_of(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("event_id", "?"))


def _check_legacy(world: World, rows: list[dict[str, Any]]) -> None:
    """Charges API rows against the Stripe charges no PaymentIntent made."""
    legacy = {k: c for k, c in world.charges.items() if not c.get("payment_intent")}
    by_event: dict[str, list[str]] = defaultdict(list)
    for charge_id, charge in legacy.items():
        by_event[_event_of(charge)].append(charge_id)
    for event, ids in by_event.items():
        if len(ids) > 1:
            world.duplicate(f"event {event}: {len(ids)} Stripe charges {ids}")
    rows_by_charge: dict[str, int] = defaultdict(int)
    for row in rows:
        if row["stripe_charge_id"] is None:
            if by_event.get(row["event_id"]):
                world.mismatch(f"charge event {row['event_id']}: Stripe has"
                               f" {by_event[row['event_id']]}, the row has no charge id")
            continue
        rows_by_charge[row["stripe_charge_id"]] += 1
        charge = legacy.get(row["stripe_charge_id"])
        if charge is None:
            world.mismatch(f"charge event {row['event_id']}: {row['stripe_charge_id']}"
                           " not on Stripe as a Charges API charge")
            continue
        if _event_of(charge) != row["event_id"]:
            world.mismatch(f"charge {charge['id']}: metadata {charge['metadata']} != row event"
                           f" {row['event_id']}")
        if charge["status"] != row["status"] or charge["amount"] != row["amount"]:
            world.mismatch(f"charge {charge['id']}: Stripe {charge['status']}/{charge['amount']}"
                           f" != row {row['status']}/{row['amount']}")
        # localstripe names the charged card `payment_method` (Stripe: `source.id`)
        charged = charge.get("payment_method") or (charge.get("source") or {}).get("id")
        if charged != row["stripe_card_id"]:
            world.mismatch(f"charge {charge['id']}: charged card {charged} != row's"
                           f" {row['stripe_card_id']}")
    for charge_id in legacy:
        if rows_by_charge.get(charge_id, 0) != 1:
            world.mismatch(f"Stripe charge {charge_id}: {rows_by_charge.get(charge_id, 0)}"
                           " charges rows")


def _check_intent(world: World, row: dict[str, Any], intent: dict[str, Any]) -> None:
    pi, event = intent["id"], row["event_id"]
    if _event_of(intent) != event:
        world.mismatch(f"PaymentIntent {pi}: metadata {intent['metadata']} != row event {event}")
    if (intent["amount"], intent["currency"]) != (row["amount"], row["currency"]):
        world.mismatch(f"PaymentIntent {pi}: {intent['amount']} {intent['currency']} != row"
                       f" {row['amount']} {row['currency']}")
    if intent["status"] not in INTENT_STATUSES.get(row["status"], set()):
        world.mismatch(f"PaymentIntent {pi}: Stripe {intent['status']} != row {row['status']}")
    latest = intent.get("latest_charge")
    latest = latest.get("id") if isinstance(latest, dict) else latest
    if row["status"] == "succeeded":
        if row["stripe_charge_id"] != latest:
            world.mismatch(f"PaymentIntent {pi}: latest charge {latest} != row's"
                           f" {row['stripe_charge_id']}")
        if intent.get("payment_method") != row["stripe_card_id"]:
            world.mismatch(f"PaymentIntent {pi}: paid with {intent.get('payment_method')} !="
                           f" row's {row['stripe_card_id']}")
    if row["stripe_charge_id"] is not None:
        charge = world.charges.get(row["stripe_charge_id"])
        if charge is None or charge.get("payment_intent") != pi:
            world.mismatch(f"charge event {event}: {row['stripe_charge_id']} is not a charge"
                           f" of {pi}")
        elif charge["amount"] != row["amount"]:
            world.mismatch(f"charge {charge['id']}: {charge['amount']} != row {row['amount']}")


def _check_intents(world: World, rows: list[dict[str, Any]]) -> None:
    """PaymentIntent rows against the users' PaymentIntents, one per event."""
    by_event: dict[str, list[str]] = defaultdict(list)
    for pi, intent in world.intents.items():
        by_event[_event_of(intent)].append(pi)
    for event, ids in by_event.items():
        if len(ids) > 1:
            world.duplicate(f"event {event}: {len(ids)} PaymentIntents {ids}")
    named: dict[str, int] = defaultdict(int)
    for row in rows:
        pi = row["payment_intent_id"]
        if pi is None:
            if by_event.get(row["event_id"]):
                world.mismatch(f"charge event {row['event_id']}: Stripe has PaymentIntents"
                               f" {by_event[row['event_id']]}, the row names none")
            continue
        named[pi] += 1
        intent = world.intents.get(pi)
        if intent is None:
            world.mismatch(f"charge event {row['event_id']}: PaymentIntent {pi} not on Stripe")
        else:
            _check_intent(world, row, intent)
    for pi in world.intents:
        if named.get(pi, 0) != 1:
            world.mismatch(f"PaymentIntent {pi}: {named.get(pi, 0)} charges rows")
    for charge_id, charge in world.charges.items():
        pi = charge.get("payment_intent")
        if pi and pi not in world.intents:
            world.mismatch(f"Stripe charge {charge_id}: its PaymentIntent {pi} is not a user's")


def _check_ledger(world: World, rows: list[dict[str, Any]]) -> None:
    by_event = {r["event_id"]: r for r in rows}
    events = world.rows("SELECT event_id, status, result FROM payment_events"
                        " WHERE user_id = ANY(:users) AND type = 'charge_requested'")
    for event in events:
        row = by_event.get(event["event_id"])
        result = event["result"] or {}
        if event["status"] == "succeeded" and (
                row is None or row["stripe_charge_id"] != result.get("charge_id")):
            world.mismatch(f"event {event['event_id']}: result charge"
                           f" {result.get('charge_id')} != row {row and row['stripe_charge_id']}")
        if (event["status"] == "action_required") != bool(
                row and row["status"] == "requires_action"):
            world.mismatch(f"event {event['event_id']}: {event['status']} but the charges row"
                           f" is {row and row['status']}")
        elif event["status"] == "action_required" and row is not None and (
                result.get("payment_intent_id") != row["payment_intent_id"]):
            world.mismatch(f"event {event['event_id']}: result PaymentIntent"
                           f" {result.get('payment_intent_id')} != row's"
                           f" {row['payment_intent_id']}")


def check_charges(world: World) -> None:
    rows = world.rows("SELECT * FROM charges WHERE user_id = ANY(:users)")
    for row in rows:
        if row["status"] == "pending":
            world.mismatch(f"charge event {row['event_id']}: still pending")
    _check_legacy(world, [r for r in rows if r["payment_intent_id"] is None])
    _check_intents(world, rows)
    _check_ledger(world, rows)
