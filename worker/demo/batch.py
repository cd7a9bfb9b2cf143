"""The demo's batch: what is published, in which phases, and what each event is expected
to end as; and the batch as it runs, published with a plain Celery app and read back from
the ledger."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from celery import Celery
from sqlalchemy import Engine, text

from core.settings import get_settings
from core.signing import signed_headers

# Card numbers the fake knows. One number always gives one fingerprint (what card dedup keys
# on); 4000000000000341 attaches fine and is declined only when charged.
VISA, MASTERCARD, DEBIT, DECLINES = (
    "4242424242424242", "5555555555554444", "4000056655665556", "4000000000000341",
)  # fmt: skip
# Raw numbers cannot be tokenised with a real key; Stripe's test tokens stand in for them.
STRIPE_TEST_TOKENS = {
    VISA: "tok_visa", MASTERCARD: "tok_mastercard", DEBIT: "tok_visa_debit",
    DECLINES: "tok_chargeCustomerFail",
}  # fmt: skip
CHARGES = [(1999, "usd"), (2500, "EUR"), (1000, "jpy"), (4999, "gbp"), (120000, "JPY")]

Expected = tuple[str, str | None]  # final status and error_code
OK: Expected = ("succeeded", None)


class Tok(NamedTuple):
    number: str  # published as a fresh token of this card number


class CardOf(NamedTuple):
    tag: str  # published as the card id in the result of the event with this tag


Step = tuple[str, str, int, Expected, dict[str, Any]]  # type, tag, user index, expected, kwargs


class Phase(NamedTuple):
    title: str
    steps: list[Step]
    until_waiting: bool = False  # wait only until the events wait for a prerequisite


def plan(n: int) -> list[Phase]:
    """The batch for users 0…n-1: user 0 adds a card twice, user 1 switches and removes
    cards, the last user is charged before it is registered, the others are charged."""
    late, charge, card = n - 1, "charge_requested", "card_token_received"
    number = {i: (DECLINES, MASTERCARD)[i % 2] for i in range(2, late)} | {
        0: VISA, 1: VISA, late: DEBIT,
    }  # fmt: skip
    regular: list[Step] = [
        (charge, f"charge{i}-{k}", i, ("failed", "card_declined") if number[i] == DECLINES else OK,
         {"amount": amount, "currency": currency} | ({"card_id": CardOf(f"card{i}")} if k else {}))
        for i in range(2, late)
        for k, (amount, currency) in enumerate([CHARGES[i % 5], CHARGES[(i + 2) % 5]])
    ]  # fmt: skip
    twice: Step = (charge, "charge0", 0, OK, {"amount": 1999, "currency": "usd"})
    return [
        Phase("the last user is charged before it is registered: the charge waits",
              [(charge, "late-charge", late, OK, {"amount": 2500, "currency": "eur"})], True),
        Phase("registrations and first cards; a charge with amount 12.5", [
            *[("user_registered", f"reg{i}", i, OK,
               {"email": f"user{i}@example.com", "name": f"User {i}"}) for i in range(n)],
            *[(card, f"card{i}", i, OK, {"token": Tok(number[i])}) for i in range(n)],
            (charge, "invalid", 0, ("failed", "invalid_message"),
             {"amount": 12.5, "currency": "usd"}),
        ]),
        Phase("user 0 adds the same card again; user 1 adds a second card as default; charges,"
              " one of them published twice, one below the minimum", [
            (card, "card0-again", 0, OK, {"token": Tok(VISA)}),
            (card, "card1-second", 1, OK, {"token": Tok(MASTERCARD), "make_default": True}),
            twice, twice,
            (charge, "too-small", 0, ("failed", "amount_too_small"),
             {"amount": 20, "currency": "usd"}),
            *regular,
        ]),
        Phase("user 1 makes the first card the default again",
              [("default_card_changed", "default1", 1, OK, {"card_id": CardOf("card1")})]),
        Phase("user 1 removes the second card and is charged on the default", [
            ("card_removed", "remove1", 1, OK, {"card_id": CardOf("card1-second")}),
            (charge, "charge1", 1, OK, {"amount": 3000, "currency": "eur"}),
        ]),
    ]  # fmt: skip


def fetch_rows(engine: Engine, sql: str, **params: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(text(sql), params).mappings()]


class Batch:
    """Publishes the plan as any upstream app would, with a plain Celery app."""

    def __init__(
        self, run: str, app: Celery, queue: str, engine: Engine, tokens: Callable[[str], str]
    ) -> None:
        self.run, self.app, self.queue, self.engine, self.tokens = run, app, queue, engine, tokens
        self.expected: dict[str, Expected] = {}
        self.sent = 0

    def send(self, users: list[str], step: Step) -> None:
        type_, tag, user, expect, kwargs = step
        body = {"event_id": self.id(tag), "user_id": users[user]}
        for name, value in kwargs.items():
            if isinstance(value, Tok):
                value = self.tokens(value.number)
            elif isinstance(value, CardOf):
                value = (self.event(value.tag)["result"] or {}).get("card_id")
            body[name] = value
        name = f"payments.{type_}"
        # Signed as an upstream app signs, when the demo's worker has message keys.
        headers = signed_headers(get_settings().message_keyring, name, body)
        self.app.send_task(name, kwargs=body, queue=self.queue, headers=headers)
        self.expected[self.id(tag)] = expect
        self.sent += 1

    def id(self, tag: str) -> str:
        return f"{self.run}-{tag}"

    def events(self) -> dict[str, dict[str, Any]]:
        sql = "SELECT * FROM payment_events WHERE event_id = ANY(:ids)"
        rows = fetch_rows(self.engine, sql, ids=list(self.expected))
        return {row["event_id"]: row for row in rows}

    def event(self, tag: str) -> dict[str, Any]:
        return self.events().get(self.id(tag), {})
