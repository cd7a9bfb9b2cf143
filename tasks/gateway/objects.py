"""What payworker reads of Stripe's objects: small frozen values, built from the SDK's
objects without importing the SDK (attribute reads only)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.redact import redact


@dataclass(frozen=True)
class CardDetails:
    fingerprint: str
    brand: str | None
    last4: str | None
    exp_month: int | None
    exp_year: int | None
    card_id: str | None = None


@dataclass(frozen=True)
class ChargeOutcome:
    charge_id: str
    status: str
    failure_code: str | None
    failure_message: str | None
    decline_code: str | None


@dataclass(frozen=True)
class PaymentMethodCard:
    """A card PaymentMethod as Stripe holds it: its card, and the customer it is attached
    to (None: not attached)."""

    card: CardDetails
    customer_id: str | None


@dataclass(frozen=True)
class IntentOutcome:
    """A PaymentIntent as payworker reads it. `client_secret` is for the app alone: it is
    never logged and goes only into the result of an event waiting for its customer."""

    intent_id: str
    status: str
    client_secret: str | None
    charge_id: str | None
    payment_method: str | None
    created: int
    # Set after a failed attempt: Stripe's error code (authentication_required,
    # card_declined, payment_intent_authentication_failure...), decline code, message.
    error_code: str | None = None
    decline_code: str | None = None
    error_message: str | None = None


@dataclass(frozen=True)
class SetupOutcome:
    """A SetupIntent as payworker reads it. `client_secret` is for the app alone: kept out
    of the repr, it goes only into the event's result."""

    setup_intent_id: str
    client_secret: str = field(repr=False)
    status: str


@dataclass(frozen=True)
class RefundOutcome:
    refund_id: str
    status: str
    amount: int
    failure_reason: str | None


def card_details(card: Any) -> CardDetails:
    return CardDetails(
        fingerprint=card.fingerprint,
        brand=getattr(card, "brand", None),
        last4=getattr(card, "last4", None),
        exp_month=getattr(card, "exp_month", None),
        exp_year=getattr(card, "exp_year", None),
        card_id=card.id if getattr(card, "object", None) == "card" else None,
    )


def charge_outcome(charge: Any) -> ChargeOutcome:
    outcome = getattr(charge, "outcome", None)
    return ChargeOutcome(
        charge_id=str(charge.id),
        status=str(charge.status),
        failure_code=getattr(charge, "failure_code", None),
        failure_message=getattr(charge, "failure_message", None),
        decline_code=getattr(outcome, "reason", None) if outcome is not None else None,
    )


def intent_outcome(pi: Any, *, error: Any = None) -> IntentOutcome:
    """Our view of a PaymentIntent; `error` is the API error a failed confirm answered
    (its code says more than the PaymentIntent's own `last_payment_error`)."""
    last = error if error is not None else getattr(pi, "last_payment_error", None)
    charge = getattr(pi, "latest_charge", None)
    if charge is not None and not isinstance(charge, str):
        charge = getattr(charge, "id", None)
    method = getattr(pi, "payment_method", None)
    if method is not None and not isinstance(method, str):
        method = getattr(method, "id", None)
    return IntentOutcome(
        intent_id=str(pi.id),
        status=str(pi.status),
        client_secret=getattr(pi, "client_secret", None),
        charge_id=charge,
        payment_method=method,
        created=int(getattr(pi, "created", 0) or 0),
        error_code=getattr(last, "code", None) if last is not None else None,
        decline_code=getattr(last, "decline_code", None) if last is not None else None,
        error_message=_message(last),
    )


def _message(error: Any) -> str | None:
    text = str(getattr(error, "message", "") or "") if error is not None else ""
    return redact(text) or None


def refund_outcome(refund: Any) -> RefundOutcome:
    return RefundOutcome(
        refund_id=str(refund.id),
        status=str(refund.status),
        amount=int(refund.amount),
        failure_reason=getattr(refund, "failure_reason", None),
    )


def made_by(obj: Any, event_id: str, generation: int | None) -> bool:
    """True when `obj` carries our metadata of `event_id` and, unless `generation` is None,
    of that generation (objects of generation 0 carry no `generation` key)."""
    metadata = getattr(obj, "metadata", None)
    if metadata is None or getattr(metadata, "event_id", None) != event_id:
        return False
    return generation is None or str(getattr(metadata, "generation", "0")) == str(generation)
