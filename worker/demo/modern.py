"""The demo's checks of the modern path (user 0, `batch.modern_plan`): a PaymentMethod card
and its duplicate, the charge that needs 3-D Secure, a partial refund and a refused
over-refund. Against the fake, Stripe's side is compared too."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tasks.money import format_amount
from worker.demo.batch import PARTIAL_REFUND, Batch, fetch_rows
from worker.demo.customer import OnSession

if TYPE_CHECKING:
    from stripe_fake import FakeStripe

Check = tuple[str, bool | None]  # what is checked, and whether it holds (None: skipped)
ROW_SQL = "SELECT * FROM {table} WHERE event_id = :event_id"


def _row(b: Batch, table: str, tag: str) -> dict[str, Any]:
    rows = fetch_rows(b.engine, ROW_SQL.format(table=table), event_id=b.id(tag))
    return rows[0] if rows else {}


def _money(amount: Any, currency: Any) -> str:
    if type(amount) is not int or not currency:
        return repr(amount)
    return format_amount(amount, str(currency)).upper()


def modern_checks(b: Batch, cards: list[dict[str, Any]], fake: FakeStripe | None) -> list[Check]:
    """Every check of the modern path, in the order of its phases."""
    return [*_card_checks(b, cards, fake), *_secure_checks(b, fake), *_refund_checks(b, fake)]


def _card_checks(b: Batch, cards: list[dict[str, Any]], fake: FakeStripe | None) -> list[Check]:
    pm, secure = b.card_id("pm0") or "", b.card_id("pm0-secure") or ""
    kind = {card["stripe_card_id"]: card["kind"] for card in cards}
    duplicate = b.event("pm0-visa").get("result") or {}
    attached, nothing_attached = "", True  # real Stripe: the dashboard shows the customer
    if fake is not None:
        customer = _customer_id(b, "user0")
        on_stripe = {p["id"] for p in fake.list_payment_methods(customer) if p["id"][:3] == "pm_"}
        attached = f"; the customer has {len(on_stripe)} PaymentMethods on Stripe, the 2 others"
        nothing_attached = on_stripe == {pm, secure}
    return [
        ("user 0's 2 new PaymentMethods are recorded as cards of kind payment_method",
         pm.startswith("pm_") and {kind.get(pm), kind.get(secure)} == {"payment_method"}),
        ("user 0's PaymentMethod of the Visa it holds as a token: result.duplicate with the"
         f" token card's id{attached}",
         duplicate.get("duplicate") is True and duplicate.get("card_id") == b.card_id("card0")
         and nothing_attached),
    ]  # fmt: skip


def _customer_id(b: Batch, user: str) -> str:
    sql = "SELECT stripe_customer_id FROM customers WHERE user_id = :user_id"
    rows = fetch_rows(b.engine, sql, user_id=b.id(user))
    return str(rows[0]["stripe_customer_id"]) if rows else ""


def _secure_checks(b: Batch, fake: FakeStripe | None) -> list[Check]:
    waiting = b.seen.get("charge-secure", {})
    result = waiting.get("result") or {}
    pi = str(result.get("payment_intent_id") or "")
    secret = str(result.get("client_secret") or "")
    waited: Check = (
        "the 3-D Secure charge waited for its customer: action_required"
        f" ({waiting.get('error_code')}), its PaymentIntent and client secret in the result",
        waiting.get("status") == "action_required"
        and waiting.get("error_code") == "authentication_required"
        and pi.startswith("pi_")
        and secret.startswith(f"{pi}_secret_"),
    )
    if fake is None:
        note = ("real Stripe: the customer's 3-D Secure needs a browser, which the demo cannot"
                " play; the charge stays action_required, its success is not checked")  # fmt: skip
        return [waited, (note, None)]
    event, charge = b.event("charge-secure"), _row(b, "charges", "charge-secure")
    intent = fake.get_payment_intent(pi) if pi else {}
    on = b.on_session
    said = f"{on.confirmed}, then {on.authenticated}" if isinstance(on, OnSession) else on
    return [
        waited,
        (f"the customer confirmed on-session and authenticated ({said}); the worker's watch"
         f" then found the PaymentIntent {intent.get('status')}: event {event.get('status')},"
         f" charge {charge.get('status')} with the PaymentIntent's charge",
         on == OnSession("requires_action", "succeeded")
         and event.get("status") == "succeeded" and charge.get("status") == "succeeded"
         and charge.get("payment_intent_id") == pi
         and charge.get("stripe_charge_id") == intent.get("latest_charge") is not None),
    ]  # fmt: skip


def _refund_checks(b: Batch, fake: FakeStripe | None) -> list[Check]:
    charge = _row(b, "charges", "charge-pm")
    amount, currency = charge.get("amount"), charge.get("currency")
    refunded = charge.get("amount_refunded")
    part, part_row = b.event("refund-part"), _row(b, "refunds", "refund-part")
    over = b.event("refund-over")
    asked = (over.get("payload") or {}).get("amount")
    left = amount - refunded if type(amount) is int and type(refunded) is int else None
    stripe_side, stripe_agrees = "", True
    if fake is not None:
        found = fake.list_refunds(charge=charge["stripe_charge_id"]) if charge else []
        stripe_side = f"; Stripe holds {len(found)} refund of that charge"
        stripe_agrees = [r["amount"] for r in found] == [PARTIAL_REFUND]
    return [
        (f"the partial refund of {_money(part_row.get('amount'), currency)}: {part.get('status')};"
         f" charges.amount_refunded {_money(refunded, currency)} of {_money(amount, currency)}",
         part.get("status") == "succeeded" and part_row.get("status") == "succeeded"
         and part_row.get("amount") == PARTIAL_REFUND == refunded),
        (f"a refund of {_money(asked, currency)}, more than the {_money(left, currency)} left:"
         f" {over.get('status')} {over.get('error_code')}{stripe_side}",
         (over.get("status"), over.get("error_code")) == ("failed", "refund_exceeds_charge")
         and refunded == PARTIAL_REFUND and stripe_agrees),
    ]  # fmt: skip
