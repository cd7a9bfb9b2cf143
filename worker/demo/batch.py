"""The demo's batch: what is published, in which phases, and what each event is expected
to end as; and the batch as it runs, published with a plain Celery app and read back from
the ledger."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

from celery import Celery
from sqlalchemy import Engine, text

from core.settings import get_settings
from core.signing import signed_headers
from db.models import TERMINAL_STATUSES, EventStatus
from worker.demo.customer import OnSession

# Card numbers the fake knows. One number always gives one fingerprint (what card dedup keys
# on); 4000000000000341 attaches fine and is declined only when charged.
VISA, MASTERCARD, DEBIT, DECLINES = (
    "4242424242424242", "5555555555554444", "4000056655665556", "4000000000000341",
)  # fmt: skip
# A card whose issuer asks for 3-D Secure on every payment: off-session Stripe answers
# authentication_required, on-session the PaymentIntent goes to requires_action.
SECURE = "4000002760003184"
# Raw numbers cannot be tokenised with a real key; Stripe's test tokens stand in for them,
# and its test PaymentMethod ids for the PaymentMethods stripe.js would create.
STRIPE_TEST_TOKENS = {
    VISA: "tok_visa", MASTERCARD: "tok_mastercard", DEBIT: "tok_visa_debit",
    DECLINES: "tok_chargeCustomerFail",
}  # fmt: skip
STRIPE_TEST_PAYMENT_METHODS = {
    VISA: "pm_card_visa", MASTERCARD: "pm_card_mastercard",
    SECURE: "pm_card_authenticationRequired",
}  # fmt: skip
CHARGES = [(1999, "usd"), (2500, "EUR"), (1000, "jpy"), (4999, "gbp"), (120000, "JPY")]

Expected = tuple[str, str | None]  # final status and error_code
OK: Expected = ("succeeded", None)
# What a charge needing 3-D Secure shows until its customer comes back on-session.
ACTION: Expected = ("action_required", "authentication_required")
# The PaymentMethod charge the demo refunds: part of it, then more than what is left.
REFUNDED, PARTIAL_REFUND = 5000, 1500


class Tok(NamedTuple):
    number: str  # published as a fresh token of this card number


class Pm(NamedTuple):
    number: str  # published as a fresh PaymentMethod of this card number


class CardOf(NamedTuple):
    tag: str  # published as the card id in the result of the event with this tag


class EventOf(NamedTuple):
    tag: str  # published as the event id of the event with this tag


Step = tuple[str, str, int, Expected, dict[str, Any]]  # type, tag, user index, expected, kwargs


# How long a phase waits: until every event is final; until the phase's events wait for a
# prerequisite; until they are final or wait for their customer (action_required).
Until = Literal["final", "waiting", "action"]


class Authenticate(NamedTuple):
    """The customer confirms the PaymentIntent of the charge event tagged `charge` on-session
    with the card of the event tagged `card`, and passes 3-D Secure (customer.py)."""

    charge: str
    card: str


class Phase(NamedTuple):
    title: str
    steps: list[Step]
    until: Until = "final"
    authenticate: Authenticate | None = None  # before the steps are published


def plan(n: int, customer: bool = True) -> list[Phase]:
    """The batch for users 0…n-1: user 0 adds a card twice, user 1 switches and removes
    cards, the last user is charged before it is registered, the others are charged; then
    user 0 takes the modern path (`modern_plan`)."""
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
              [(charge, "late-charge", late, OK, {"amount": 2500, "currency": "eur"})],
              "waiting"),
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
        *modern_plan(customer),
    ]  # fmt: skip


def modern_plan(customer: bool) -> list[Phase]:
    """User 0 on the modern path: PaymentMethods, a charge that needs 3-D Secure, refunds.
    Without a `customer` to play (a real Stripe key) that charge stays action_required."""
    charge, pm, refund = "charge_requested", "payment_method_received", "refund_requested"
    secure_charge = ("the customer comes back on-session and authenticates the 3-D Secure charge"
                     if customer else "the 3-D Secure charge waits: no customer to play with a"
                     " real Stripe key")  # fmt: skip
    return [
        Phase("user 0 adds PaymentMethods: a new card, the Visa it holds as a token (a"
              " duplicate), and a card that needs 3-D Secure", [
            (pm, "pm0", 0, OK, {"payment_method": Pm(MASTERCARD)}),
            (pm, "pm0-visa", 0, OK, {"payment_method": Pm(VISA)}),
            (pm, "pm0-secure", 0, OK, {"payment_method": Pm(SECURE)}),
        ]),
        Phase("charges on both PaymentMethods: the 3-D Secure one waits for its customer", [
            (charge, "charge-pm", 0, OK,
             {"amount": REFUNDED, "currency": "usd", "card_id": CardOf("pm0")}),
            (charge, "charge-secure", 0, OK if customer else ACTION,
             {"amount": 7500, "currency": "eur", "card_id": CardOf("pm0-secure")}),
        ], "action"),
        Phase(f"{secure_charge}; part of the PaymentMethod charge is refunded", [
            (refund, "refund-part", 0, OK,
             {"charge_event_id": EventOf("charge-pm"), "amount": PARTIAL_REFUND,
              "reason": "requested_by_customer"}),
        ], authenticate=Authenticate("charge-secure", card="pm0-secure") if customer else None),
        Phase("a refund of more than what is left of that charge is refused", [
            (refund, "refund-over", 0, ("failed", "refund_exceeds_charge"),
             {"charge_event_id": EventOf("charge-pm"),
              "amount": REFUNDED - PARTIAL_REFUND + 1}),
        ]),
    ]  # fmt: skip


def fetch_rows(engine: Engine, sql: str, **params: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(text(sql), params).mappings()]


class Batch:
    """Publishes the plan as any upstream app would, with a plain Celery app."""

    def __init__(
        self,
        run: str,
        app: Celery,
        queue: str,
        engine: Engine,
        tokens: Callable[[str], str],
        payment_methods: Callable[[str], str],
    ) -> None:
        self.run, self.app, self.queue, self.engine = run, app, queue, engine
        self.tokens, self.payment_methods = tokens, payment_methods
        self.expected: dict[str, Expected] = {}
        self.seen: dict[str, dict[str, Any]] = {}  # tag -> its event as its phase ended
        # The customer's on-session confirmation and authentication, or why it failed.
        self.on_session: OnSession | str | None = None
        self.sent = 0

    def send(self, users: list[str], step: Step) -> None:
        type_, tag, user, expect, kwargs = step
        body = {"event_id": self.id(tag), "user_id": users[user]}
        for name, value in kwargs.items():
            if isinstance(value, Tok):
                value = self.tokens(value.number)
            elif isinstance(value, Pm):
                value = self.payment_methods(value.number)
            elif isinstance(value, CardOf):
                value = self.card_id(value.tag)
            elif isinstance(value, EventOf):
                value = self.id(value.tag)
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

    def card_id(self, tag: str) -> str | None:
        """The card id in the result of the card event with this tag."""
        card_id = (self.event(tag).get("result") or {}).get("card_id")
        return str(card_id) if card_id else None

    def settled(self, phase: Phase) -> bool:
        """Whether the phase's wait is over (see `Until`); then its events are kept in `seen`."""
        events = self.events()
        mine = [events.get(self.id(step[1]), {}) for step in phase.steps]
        # An event expected to stay unfinished (action_required) is settled there too.
        waits = {EventStatus.ACTION_REQUIRED} if phase.until == "action" else set()
        done = all(
            events.get(event_id, {}).get("status") in {*TERMINAL_STATUSES, *waits, want[0]}
            for event_id, want in self.expected.items()
        ) or (phase.until == "waiting" and all(event.get("last_error") for event in mine))
        if done:
            self.seen |= {step[1]: event for step, event in zip(phase.steps, mine, strict=True)}
        return done
