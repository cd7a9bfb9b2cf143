"""An in-process Stripe behind the `StripeGateway` interface: the same methods and return
types, objects kept in dicts, every call recorded.

It behaves as Stripe does where the workflows depend on it:

- A write with an idempotency key already used answers the first result again (an error
  the first request ended with included, as Stripe saves a declined charge's 402); the same
  key with other parameters is refused (`StripeInvalidRequest`, Stripe's 400).
- A token can be attached once; the first card of a customer becomes its default source,
  and deleting the default promotes the most recently added card left.
- Charges of the test numbers in `DECLINES` are declined (`CardDeclined`, with the failed
  charge's id), and the failed charge is kept, as Stripe keeps it.
- `forget_idempotency_keys()` is Stripe 24 hours later: the keys are gone, the objects stay
  and are found by their metadata (`find_customer`, `find_card`, `find_charge`).

Faults: `fail_next(method, error)` makes the next call of `method` raise `error` before
doing anything; with `after_effect=True` the call does its work (and saves its idempotent
result) and then raises: the response was lost, the caller saw `OutcomeUnknown`. The error
may be any exception, a foreign one included, to exercise `core.errors.translate`.
"""

from __future__ import annotations

import uuid
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from core.errors import CardDeclined, PayworkerError, StripeInvalidRequest, StripeNotFound
from tasks.gateway import CardDetails, ChargeOutcome
from tests.inprocess.fake_gateway_cards import FakeCards, card_details_of
from tests.inprocess.fake_gateway_intents import FakeIntents
from tests.inprocess.fake_gateway_refunds import FakeRefunds

T = TypeVar("T")

VISA = "4242424242424242"
MASTERCARD = "5555555555554444"
# Stripe's test cards that attach fine and are declined when charged, with the decline
# code Stripe gives.
DECLINES = {"4000000000000341": "generic_decline", "4000000000009995": "insufficient_funds"}
DECLINED_AT_CHARGE = "4000000000009995"  # insufficient_funds


@dataclass(frozen=True)
class Call:
    """One call of a gateway method: its idempotency key (writes only) and parameters."""

    method: str
    key: str | None
    params: dict[str, Any]


@dataclass
class Token:
    id: str
    card: CardDetails
    decline_code: str | None
    used: bool = False


@dataclass
class Card:
    id: str
    customer_id: str
    details: CardDetails
    metadata: dict[str, str]
    decline_code: str | None


@dataclass
class Customer:
    id: str
    email: str
    name: str | None
    metadata: dict[str, str]
    # Card ids, oldest first.
    cards: list[str] = field(default_factory=list)
    default_card: str | None = None
    # invoice_settings.default_payment_method: the default when set (fake_gateway_cards.py).
    default_payment_method: str | None = None


@dataclass
class Charge:
    id: str
    customer_id: str
    card_id: str
    amount: int
    currency: str
    description: str | None
    metadata: dict[str, str]
    status: str
    decline_code: str | None = None

    def outcome(self) -> ChargeOutcome:
        failed = self.status == "failed"
        return ChargeOutcome(
            charge_id=self.id,
            status=self.status,
            failure_code="card_declined" if failed else None,
            failure_message="Your card was declined." if failed else None,
            decline_code=self.decline_code,
        )


@dataclass(frozen=True)
class _Fault:
    error: BaseException
    after_effect: bool


def _new_id(prefix: str) -> str:
    # Unique across the session: the tests share one database whose Stripe ids are unique.
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


class FakeGateway(FakeCards, FakeIntents, FakeRefunds):
    """Stripe in dicts, with the methods of `tasks.gateway.StripeGateway`."""

    def __init__(self) -> None:
        super().__init__()
        self.customers: dict[str, Customer] = {}
        self.cards: dict[str, Card] = {}
        self.charges: dict[str, Charge] = {}
        self.tokens: dict[str, Token] = {}
        self.calls: list[Call] = []
        self._faults: dict[str, deque[_Fault]] = defaultdict(deque)
        # idempotency key -> (method and parameters of its first use, what it answered)
        self._answers: dict[str, tuple[tuple[str, dict[str, Any]], Any]] = {}

    # ---- the test's controls (not recorded as calls) ----------------------------------

    def fail_next(self, method: str, error: BaseException, *, after_effect: bool = False) -> None:
        """The next call of `method` raises `error`: before doing anything, or (with
        `after_effect`) once its work is done and its answer saved: a lost response."""
        if not hasattr(self, method):
            raise AttributeError(f"the gateway has no method {method!r}")
        self._faults[method].append(_Fault(error, after_effect))

    def forget_idempotency_keys(self) -> None:
        """Stripe a day later: every key forgotten, every object still there."""
        self._answers.clear()

    def add_token(self, number: str = VISA, *, brand: str | None = None) -> str:
        """A stripe.js token for a card number; the same number, the same fingerprint."""
        card = card_details_of(number, brand)
        token = Token(_new_id("tok"), card, DECLINES.get(number))
        self.tokens[token.id] = token
        return token.id

    def add_customer(self, email: str = "ada@example.com", **metadata: str) -> str:
        """A customer that exists on Stripe already."""
        return self._new_customer(email, None, dict(metadata))

    def add_card(self, customer_id: str, number: str = VISA, **metadata: str) -> str:
        """A card attached to a customer already; returns its id."""
        return self._attach(customer_id, self.add_token(number), dict(metadata)).card_id or ""

    def remove_card(self, customer_id: str, card_id: str) -> None:
        """A card deleted on Stripe already."""
        self._delete(customer_id, card_id)

    def stop_declining(self, card_id: str) -> None:
        """The card holder sorted it out with the bank: the next charges go through."""
        self.cards[card_id].decline_code = None

    def calls_to(self, method: str) -> list[Call]:
        return [call for call in self.calls if call.method == method]

    def methods_called(self) -> list[str]:
        return [call.method for call in self.calls]

    # ---- StripeGateway -----------------------------------------------------------------

    def create_customer(
        self, key: str, *, email: str, name: str | None, metadata: dict[str, str]
    ) -> str:
        params = {"email": email, "name": name, "metadata": metadata}
        return self._call(
            "create_customer", key, params, lambda: self._new_customer(email, name, metadata)
        )

    def find_customer(
        self, *, email: str, event_id: str, generation: int | None = None
    ) -> str | None:
        def find() -> str | None:
            for customer in reversed(self.customers.values()):  # Stripe: newest first
                if customer.email == email and _made_by(customer.metadata, event_id, generation):
                    return customer.id
            return None

        params = {"email": email, "event_id": event_id, "generation": generation}
        return self._call("find_customer", None, params, find)

    def retrieve_token(self, token: str) -> CardDetails:
        def retrieve() -> CardDetails:
            if token not in self.tokens:
                raise StripeNotFound(f"No such token: {token!r}")
            return self.tokens[token].card

        return self._call("retrieve_token", None, {"token": token}, retrieve)

    def attach_card(
        self, key: str, *, customer_id: str, token: str, metadata: dict[str, str]
    ) -> CardDetails:
        params = {"customer_id": customer_id, "token": token, "metadata": metadata}
        return self._call(
            "attach_card", key, params, lambda: self._attach(customer_id, token, metadata)
        )

    def find_card(
        self, *, customer_id: str, event_id: str, generation: int | None = None
    ) -> CardDetails | None:
        def find() -> CardDetails | None:
            for card_id in reversed(self._customer(customer_id).cards):
                card = self.cards[card_id]
                if _made_by(card.metadata, event_id, generation):
                    return card.details
            return None

        params = {"customer_id": customer_id, "event_id": event_id, "generation": generation}
        return self._call("find_card", None, params, find)

    def delete_card(self, *, customer_id: str, card_id: str) -> None:
        params = {"customer_id": customer_id, "card_id": card_id}
        self._call("delete_card", None, params, lambda: self._delete(customer_id, card_id))

    def set_default_card(self, key: str, *, customer_id: str, card_id: str) -> None:
        def set_default() -> None:
            if card_id.startswith("pm_"):
                self._set_default_payment_method(customer_id, card_id)
                return
            customer = self._customer(customer_id)
            if card_id not in customer.cards:
                raise StripeNotFound(f"No such source: {card_id!r}")
            customer.default_card = card_id
            customer.default_payment_method = None  # as the gateway clears it

        params = {"customer_id": customer_id, "card_id": card_id}
        self._call("set_default_card", key, params, set_default)

    def default_card(self, customer_id: str) -> str | None:
        def default() -> str | None:
            customer = self._customer(customer_id)
            return customer.default_payment_method or customer.default_card

        return self._call("default_card", None, {"customer_id": customer_id}, default)

    def create_charge(
        self,
        key: str,
        *,
        customer_id: str,
        card_id: str,
        amount: int,
        currency: str,
        description: str | None,
        metadata: dict[str, str],
    ) -> ChargeOutcome:
        params = {
            "customer_id": customer_id,
            "card_id": card_id,
            "amount": amount,
            "currency": currency,
            "description": description,
            "metadata": metadata,
        }
        return self._call("create_charge", key, params, lambda: self._charge(**params))

    def find_charge(
        self,
        *,
        customer_id: str,
        event_id: str,
        generation: int | None = None,
        succeeded: bool = False,
    ) -> ChargeOutcome | None:
        def find() -> ChargeOutcome | None:
            for charge in reversed(self.charges.values()):  # Stripe: newest first
                made_by_event = _made_by(charge.metadata, event_id, generation)
                if charge.customer_id == customer_id and made_by_event:
                    outcome = charge.outcome()
                    if not succeeded or outcome.status == "succeeded":
                        return outcome
            return None

        params = {
            "customer_id": customer_id,
            "event_id": event_id,
            "generation": generation,
            "succeeded": succeeded,
        }
        return self._call("find_charge", None, params, find)

    # ---- Stripe's side -----------------------------------------------------------------

    def _call(
        self, method: str, key: str | None, params: dict[str, Any], effect: Callable[[], T]
    ) -> T:
        """Record the call, apply a fault, answer a known key again, or do the work."""
        self.calls.append(Call(method, key, params))
        faults = self._faults[method]
        fault = faults.popleft() if faults else None
        if fault is not None and not fault.after_effect:
            raise fault.error
        answer = self._answer(method, key, params, effect)
        if fault is not None:
            raise fault.error
        if isinstance(answer, BaseException):
            raise answer
        return answer  # type: ignore[no-any-return]

    def _answer(
        self, method: str, key: str | None, params: dict[str, Any], effect: Callable[[], T]
    ) -> T | PayworkerError:
        if key is not None and key in self._answers:
            first, answer = self._answers[key]
            if first != (method, params):
                return StripeInvalidRequest(
                    f"Keys for idempotent requests can only be used with the same parameters"
                    f" they were first used with: {key!r}"
                )
            return answer  # type: ignore[no-any-return]
        try:
            answer: T | PayworkerError = effect()
        except PayworkerError as refused:  # Stripe saves an error answer too (a 402 decline)
            answer = refused
        if key is not None:
            self._answers[key] = ((method, params), answer)
        return answer

    def _customer(self, customer_id: str) -> Customer:
        if customer_id not in self.customers:
            raise StripeNotFound(f"No such customer: {customer_id!r}")
        return self.customers[customer_id]

    def _new_customer(self, email: str, name: str | None, metadata: dict[str, str]) -> str:
        customer = Customer(_new_id("cus"), email, name, dict(metadata))
        self.customers[customer.id] = customer
        return customer.id

    def _attach(self, customer_id: str, token_id: str, metadata: dict[str, str]) -> CardDetails:
        customer = self._customer(customer_id)
        token = self.tokens.get(token_id)
        if token is None:
            raise StripeNotFound(f"No such token: {token_id!r}")
        if token.used:
            raise StripeInvalidRequest(f"You cannot use a Stripe token more than once: {token_id}")
        token.used = True
        card_id = _new_id("card")
        details = CardDetails(**{**token.card.__dict__, "card_id": card_id})
        card = Card(card_id, customer_id, details, dict(metadata), token.decline_code)
        self.cards[card_id] = card
        customer.cards.append(card_id)
        if customer.default_card is None:
            customer.default_card = card_id  # Stripe: a customer's first source is its default
        return details

    def _delete(self, customer_id: str, card_id: str) -> None:
        customer = self._customer(customer_id)
        if card_id not in customer.cards:
            raise StripeNotFound(f"No such source: {card_id!r}")
        customer.cards.remove(card_id)
        del self.cards[card_id]
        if customer.default_card == card_id:
            # Stripe: the most recently added source left becomes the default.
            customer.default_card = customer.cards[-1] if customer.cards else None

    def _charge(
        self,
        *,
        customer_id: str,
        card_id: str,
        amount: int,
        currency: str,
        description: str | None,
        metadata: dict[str, str],
    ) -> ChargeOutcome:
        customer = self._customer(customer_id)
        if card_id not in customer.cards:
            raise StripeNotFound(f"Customer {customer_id} does not have a source {card_id}")
        decline = self.cards[card_id].decline_code
        charge = Charge(
            _new_id("ch"), customer_id, card_id, amount, currency, description, dict(metadata),
            status="failed" if decline else "succeeded", decline_code=decline,
        )  # fmt: skip
        self.charges[charge.id] = charge
        if decline:
            raise CardDeclined(
                "Your card was declined.",
                decline_code=decline,
                failure_code="card_declined",
                charge_id=charge.id,
            )
        return charge.outcome()


def _made_by(metadata: dict[str, str], event_id: str, generation: int | None) -> bool:
    """As the gateway matches: our event id and, unless None, the generation (none: 0)."""
    if metadata.get("event_id") != event_id:
        return False
    return generation is None or metadata.get("generation", "0") == str(generation)
