"""The tables upstream apps read: the ledger, customers, cards and charges; and the count
of refused messages."""

from __future__ import annotations

import enum
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class EventStatus(enum.StrEnum):
    RECEIVED = "received"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD = "dead"
    # Waiting for the customer (3-D Secure, on-session in the app): not final; the sweep
    # reads the PaymentIntent again until it succeeds, fails or expires.
    ACTION_REQUIRED = "action_required"


TERMINAL_STATUSES = frozenset({EventStatus.SUCCEEDED, EventStatus.FAILED, EventStatus.DEAD})
# The statuses of an event payworker still works on (or watches).
UNFINISHED_STATUSES = (EventStatus.RECEIVED, EventStatus.PROCESSING, EventStatus.ACTION_REQUIRED)
_UNFINISHED_SQL = "status IN ('received', 'processing', 'action_required')"


class ChargeStatus(enum.StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    # The PaymentIntent waits for its customer's authentication (the event is
    # action_required); canceled: it was canceled (expired, or by someone on Stripe).
    REQUIRES_ACTION = "requires_action"
    CANCELED = "canceled"


class CardKind(enum.StrEnum):
    SOURCE = "source"  # a legacy card (card_...), attached from a token
    PAYMENT_METHOD = "payment_method"  # a PaymentMethod (pm_...)


class RefundStatus(enum.StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


def _in(column: str, values: type[enum.StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


class PaymentEvent(Base):
    """One upstream message, keyed by its event_id: the truth about what was done."""

    __tablename__ = "payment_events"
    __table_args__ = (
        CheckConstraint(_in("status", EventStatus), name="status"),
        CheckConstraint("attempts >= 0", name="attempts_non_negative"),
        Index("ix_payment_events_status_type", "status", "type"),
        Index("ix_payment_events_user_id", "user_id"),
        Index(
            "ix_payment_events_unfinished",
            "created_at",
            postgresql_where=text(_UNFINISHED_SQL),
        ),
        # The sweeper's question: which unfinished events of my queue are due?
        Index(
            "ix_payment_events_due",
            "queue",
            "next_attempt_at",
            postgresql_where=text(_UNFINISHED_SQL),
        ),
        # The token-expiry duty's question: which kept card tokens of my queue are old?
        Index(
            "ix_payment_events_sealed",
            "queue",
            "created_at",
            postgresql_where=text("sealed_token IS NOT NULL"),
        ),
    )

    event_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    type: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[str | None] = mapped_column(String(200))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    # sha256 of the canonical message (token included) to tell a redelivery from a conflict
    # without storing the token.
    payload_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=EventStatus.RECEIVED)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    # Where an interrupted workflow resumes, and what it had learnt so far.
    recovery_point: Mapped[str] = mapped_column(String(32), default="started")
    progress: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    # Transient failures counted against the retry budget, and the last one seen.
    transient_failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    locked_by: Mapped[str | None] = mapped_column(String(255))
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    generation: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The queue the event arrived on; the sweeper re-drives it there.
    queue: Mapped[str | None] = mapped_column(String(255))
    # A card token, encrypted, kept only until the card is attached so that a re-driven
    # event can repeat the attach; never the plain token.
    sealed_token: Mapped[str | None] = mapped_column(Text)
    # How many times the sweeper published this event again.
    redrives: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Customer(Base):
    """The one Stripe customer of an upstream user."""

    __tablename__ = "customers"

    user_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    stripe_customer_id: Mapped[str] = mapped_column(String(255), unique=True)
    email: Mapped[str] = mapped_column(String(320))
    name: Mapped[str | None] = mapped_column(String(500))
    event_id: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Card(Base):
    """A card attached to a customer on Stripe; removed cards keep their row."""

    __tablename__ = "cards"
    __table_args__ = (
        # At most one active card per (user, fingerprint): the race of two concurrent
        # attaches of the same card is decided here.
        Index(
            "uq_cards_active_fingerprint",
            "user_id",
            "fingerprint",
            unique=True,
            postgresql_where=text("removed_at IS NULL"),
        ),
        Index(
            "uq_cards_one_default",
            "user_id",
            unique=True,
            postgresql_where=text("is_default AND removed_at IS NULL"),
        ),
        CheckConstraint("NOT (is_default AND removed_at IS NOT NULL)", name="removed_not_default"),
        CheckConstraint(_in("kind", CardKind), name="kind"),
        Index("ix_cards_user_id", "user_id"),
    )

    # A legacy card's card_... or a PaymentMethod's pm_... (see `kind`).
    stripe_card_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("customers.user_id"))
    kind: Mapped[str] = mapped_column(
        String(16), default=CardKind.SOURCE, server_default=CardKind.SOURCE.value
    )
    fingerprint: Mapped[str] = mapped_column(String(255))
    brand: Mapped[str | None] = mapped_column(String(64))
    last4: Mapped[str | None] = mapped_column(String(4))
    exp_month: Mapped[int | None] = mapped_column(Integer)
    exp_year: Mapped[int | None] = mapped_column(Integer)
    is_default: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    event_id: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    removed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Charge(Base):
    """A charge requested by one event; pending while its Stripe outcome is not known."""

    __tablename__ = "charges"
    __table_args__ = (
        CheckConstraint(_in("status", ChargeStatus), name="status"),
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("currency = lower(currency)", name="currency_lower"),
        CheckConstraint("amount_refunded >= 0 AND amount_refunded <= amount", name="refunded"),
        Index("ix_charges_user_id", "user_id"),
        # Unique where set: a charge of the Charges API (and a pending one) has none, and
        # costs the index nothing on the hot path.
        Index(
            "uq_charges_payment_intent_id",
            "payment_intent_id",
            unique=True,
            postgresql_where=text("payment_intent_id IS NOT NULL"),
        ),
    )

    event_id: Mapped[str] = mapped_column(ForeignKey("payment_events.event_id"), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(200))
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    stripe_card_id: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default=ChargeStatus.PENDING)
    stripe_charge_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    # The PaymentIntent of a charge made through PAYWORKER_CHARGE_API=payment_intents.
    payment_intent_id: Mapped[str | None] = mapped_column(String(255))
    # The sum of the charge's succeeded refunds (written from the refunds table, never
    # incremented on its own).
    amount_refunded: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    failure_code: Mapped[str | None] = mapped_column(String(64))
    decline_code: Mapped[str | None] = mapped_column(String(64))
    failure_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class Refund(Base):
    """A refund requested by one event, of the charge another event made."""

    __tablename__ = "refunds"
    __table_args__ = (
        CheckConstraint(_in("status", RefundStatus), name="status"),
        CheckConstraint("amount > 0", name="amount_positive"),
        Index("ix_refunds_charge_event_id", "charge_event_id"),
        Index("ix_refunds_user_id", "user_id"),
    )

    event_id: Mapped[str] = mapped_column(ForeignKey("payment_events.event_id"), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(200))
    charge_event_id: Mapped[str] = mapped_column(ForeignKey("charges.event_id"))
    stripe_refund_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    reason: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default=RefundStatus.PENDING)
    failure_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class Duty(Base):
    """A periodic duty of one queue's workers (the sweep, the token expiry): who leads it,
    and how its last run went. Written by the leader; read by `payworker status`."""

    __tablename__ = "payworker_duties"

    queue: Mapped[str] = mapped_column(String(255), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    # The worker that holds the queue's leadership ("nodename:pid"); null once it stepped
    # down cleanly.
    leader: Mapped[str | None] = mapped_column(String(255))
    leader_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # How often the leader runs it, so that a reader can tell a late run from a due one.
    period_seconds: Mapped[float] = mapped_column(Float)
    last_run_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_result: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    last_error: Mapped[str | None] = mapped_column(Text)
    last_error_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class MessageRefusal(Base):
    """How many messages were refused as not authenticated, per UTC day and reason. Only
    counts: nothing a refused message carried is kept (docs/operations.md)."""

    __tablename__ = "payworker_refusals"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    # core.signing.Refusal: unsigned, malformed, unknown_key, bad_signature, positional_args
    reason: Mapped[str] = mapped_column(String(32), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    last_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
