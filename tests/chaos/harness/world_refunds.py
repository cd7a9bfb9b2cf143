"""The world check's refunds: every Stripe refund of the users' charges carries its
refund event's metadata, one per event, and has exactly one refunds row agreeing on charge,
amount and status; every refunds row that names a Stripe refund finds it; and each
charges row's `amount_refunded` is the Stripe charge's, and the sum of its succeeded
refunds rows."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.chaos.harness.world import World


def _check_rows(world: World, rows: list[dict[str, Any]], refunds: dict[str, dict[str, Any]],
                charge_of: dict[str, str | None]) -> None:
    by_event: dict[str, list[str]] = defaultdict(list)
    for refund_id, refund in refunds.items():
        by_event[(refund.get("metadata") or {}).get("event_id", "?")].append(refund_id)
    for event, ids in by_event.items():
        if len(ids) > 1:
            world.duplicate(f"refund event {event}: {len(ids)} Stripe refunds {ids}")
    named: dict[str, int] = defaultdict(int)
    for row in rows:
        event = row["event_id"]
        if row["status"] == "pending":
            world.mismatch(f"refund event {event}: still pending")
        if row["stripe_refund_id"] is None:
            if by_event.get(event):
                world.mismatch(f"refund event {event}: Stripe has {by_event[event]}, the row"
                               " names none")
            continue
        named[row["stripe_refund_id"]] += 1
        refund = refunds.get(row["stripe_refund_id"])
        if refund is None:
            world.mismatch(f"refund event {event}: {row['stripe_refund_id']} not on Stripe")
            continue
        meta = (refund.get("metadata") or {}).get("event_id")
        expected = (event, row["amount"], row["status"], charge_of.get(row["charge_event_id"]))
        got = (meta, refund["amount"], refund["status"], refund["charge"])
        if got != expected:
            world.mismatch(f"refund {refund['id']}: Stripe (event, amount, status, charge) {got}"
                           f" != row {expected}")
    for refund_id, refund in refunds.items():
        if named.get(refund_id, 0) != 1:
            world.mismatch(f"Stripe refund {refund_id} of {refund['charge']}:"
                           f" {named.get(refund_id, 0)} refunds rows")


def check_refunds(world: World) -> None:
    rows = world.rows("SELECT * FROM refunds WHERE user_id = ANY(:users)")
    charge_rows = world.rows("SELECT * FROM charges WHERE user_id = ANY(:users)")
    # Every Stripe refund of the users' charges (one read: the fake lists them all).
    refunds = {r["id"]: r for r in world.fake.list_refunds() if r["charge"] in world.charges}
    world.report.stripe_refunds = len(refunds)
    charge_of = {r["event_id"]: r["stripe_charge_id"] for r in charge_rows}
    _check_rows(world, rows, refunds, charge_of)
    succeeded: dict[str, int] = defaultdict(int)
    for row in rows:
        if row["status"] == "succeeded":
            succeeded[row["charge_event_id"]] += row["amount"]
    for row in charge_rows:
        charge = world.charges.get(row["stripe_charge_id"] or "")
        stripe_refunded = charge["amount_refunded"] if charge else 0
        if not row["amount_refunded"] == stripe_refunded == succeeded.get(row["event_id"], 0):
            world.mismatch(f"charge event {row['event_id']}: amount_refunded"
                           f" {row['amount_refunded']}, Stripe's {stripe_refunded}, succeeded"
                           f" refunds rows {succeeded.get(row['event_id'], 0)}")
