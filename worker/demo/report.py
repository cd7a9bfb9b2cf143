"""The demo's report: four tables read from Postgres, and the checks whose outcome is the
exit code (every event as expected; against the fake, Stripe agreeing with Postgres; the
modern path's checks are in modern.py)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from db.models import EventStatus
from tasks.money import format_amount
from worker.demo.batch import Batch, fetch_rows
from worker.demo.modern import Check, modern_checks

if TYPE_CHECKING:
    from stripe_fake import FakeStripe

STATUSES = tuple(EventStatus)  # the columns of the first table, in the ledger's order


def _table(title: str, columns: Iterable[str], rows: Iterable[Iterable[str]]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold", justify="right" if column == "amount" else "left")
    for row in rows:
        table.add_row(*row)
    return table


CHARGES_SQL = """
    SELECT e.event_id, e.user_id, e.status, e.payload, c.amount, c.currency, c.amount_refunded,
           c.status AS charge, coalesce(c.decline_code, c.failure_code, e.error_code) AS code
    FROM payment_events e LEFT JOIN charges c USING (event_id)
    WHERE e.type = 'charge_requested' AND e.event_id LIKE :like ORDER BY e.created_at"""
REFUNDS_SQL = """
    SELECT e.event_id, e.status, e.payload, e.error_code, r.amount, r.status AS refund,
           e.payload->>'charge_event_id' AS charge_event_id, c.currency
    FROM payment_events e LEFT JOIN refunds r USING (event_id)
         LEFT JOIN charges c ON c.event_id = e.payload->>'charge_event_id'
    WHERE e.type = 'refund_requested' AND e.event_id LIKE :like ORDER BY e.created_at"""


def _money(amount: Any, currency: str) -> str:
    # Minor units become a decimal with integer arithmetic (1000 JPY stays 1000, 1999 USD is 19.99).
    shown = format_amount(amount, currency) if type(amount) is int else f"{amount!r} {currency}"
    return shown.upper()


def _charge_row(row: dict[str, Any], short: int) -> list[str]:
    # A message rejected before charging has no charges row: show what its payload said.
    amount = row["amount"] if row["amount"] is not None else row["payload"].get("amount")
    currency = str(row["currency"] or row["payload"].get("currency"))
    refunded = _money(row["amount_refunded"], currency) if row["amount_refunded"] else ""
    return [row["event_id"][short:], row["user_id"][short:], _money(amount, currency),
            row["status"], row["charge"] or "-", refunded, row["code"] or ""]  # fmt: skip


def _refund_row(row: dict[str, Any], short: int) -> list[str]:
    # A refused refund has no refunds row: show what its payload asked for.
    amount = row["amount"] if row["amount"] is not None else row["payload"].get("amount")
    shown = _money(amount, row["currency"]) if row["currency"] else repr(amount)
    return [row["event_id"][short:], str(row["charge_event_id"])[short:], shown,
            row["status"], row["refund"] or "-", row["error_code"] or ""]  # fmt: skip


def _card_row(card: dict[str, Any], short: int) -> list[str]:
    return [card["user_id"][short:], card["kind"], card["last4"], card["brand"],
            card["fingerprint"][:8], "yes" if card["is_default"] else "",
            "yes" if card["removed_at"] else ""]  # fmt: skip


def print_tables(b: Batch, console: Console) -> list[dict[str, Any]]:
    """The four summary tables, read from Postgres; returns the run's cards rows."""
    like, short = f"{b.run}-%", len(b.run) + 1
    counts = Counter((e["type"], e["status"]) for e in b.events().values())
    types = sorted({type_ for type_, _ in counts})
    rows = ([t, *(str(counts[t, s] or "-") for s in STATUSES)] for t in types)
    console.print(_table("payment_events by type and status", ["type", *STATUSES], rows))
    charges = [_charge_row(row, short) for row in fetch_rows(b.engine, CHARGES_SQL, like=like)]
    columns = ["event", "user", "amount", "event", "charge", "refunded", "error/decline"]
    console.print(_table("charge_requested events and their charges rows", columns, charges))
    refunds = [_refund_row(row, short) for row in fetch_rows(b.engine, REFUNDS_SQL, like=like)]
    columns = ["event", "charge event", "amount", "event", "refund", "error"]
    console.print(_table("refund_requested events and their refunds rows", columns, refunds))
    sql = "SELECT * FROM cards WHERE user_id LIKE :like ORDER BY user_id, created_at"
    cards = fetch_rows(b.engine, sql, like=like)
    columns = ["user", "kind", "last4", "brand", "fingerprint", "default", "removed"]
    console.print(_table("cards", columns, (_card_row(card, short) for card in cards)))
    return cards


def checks(b: Batch, cards: list[dict[str, Any]], fake: FakeStripe | None) -> list[Check]:
    """What the batch must show: every expected outcome, and the Stripe side agreeing."""
    events = b.events()
    wrong = []
    for event_id, want in b.expected.items():
        got = events.get(event_id, {})
        if (got.get("status"), got.get("error_code")) != want:
            wrong.append(f"{event_id}: {got.get('status')}/{got.get('error_code')}, not {want}")
    card_id = {tag: (b.event(tag).get("result") or {}).get("card_id") for tag in
               ("card0", "card0-again", "card1", "card1-second")}  # fmt: skip
    dup, late = b.event("card0-again").get("result") or {}, b.event("late-charge")
    user1 = {c["stripe_card_id"]: c for c in cards if c["user_id"] == b.id("user1")}
    checks: list[Check] = [
        (f"{b.sent} messages, {len(events)} events, each with its expected outcome"
         + "".join(f"\n       {line}" for line in wrong), not wrong),
        ("user 0's second token of the same card: result.duplicate and the first card's id",
         dup.get("duplicate") is True and card_id["card0-again"] == card_id["card0"]),
        (f"the charge sent before its user's registration waited ({late.get('attempts')}"
         " attempts), then succeeded", late.get("status") == "succeeded" and late["attempts"] > 1),
        ("user 1: the first card is the default again, the second one is removed",
         user1.get(str(card_id["card1"]), {}).get("is_default") is True
         and user1.get(str(card_id["card1-second"]), {}).get("removed_at") is not None),
    ]  # fmt: skip
    checks += modern_checks(b, cards, fake)
    if fake is None:
        return [*checks, ("real Stripe: compare with the dashboard's test-mode payments", True)]
    like = f"{b.run}-%"
    customers = fetch_rows(b.engine, "SELECT * FROM customers WHERE user_id LIKE :like", like=like)
    on_stripe = [c for cu in customers for c in fake.list_charges(cu["stripe_customer_id"])]
    paid = sum(c["status"] == "succeeded" for c in on_stripe)
    sql = "SELECT * FROM charges WHERE status = 'succeeded' AND event_id LIKE :like"
    rows = len(fetch_rows(b.engine, sql, like=like))
    twice = sum(c["metadata"].get("event_id") == b.id("charge0") for c in on_stripe)
    return [
        *checks,
        (f"the Stripe fake holds {paid} succeeded charges, Postgres {rows}", paid == rows),
        (f"the charge event published twice made {twice} charge on Stripe", twice == 1),
    ]
