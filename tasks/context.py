"""What a workflow gets to work with: the claim, short transactions, Stripe, settings."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, select, text
from sqlalchemy.orm import Session

from db.models import Card, Customer
from db.session import transaction
from tasks import ledger
from tasks.errors import PermanentError, PrerequisiteMissing
from tasks.gateway import StripeGateway, idempotency_key
from worker.settings import Settings


@dataclass
class Context:
    """One run of one event: every transaction a workflow opens goes through here."""

    engine: Engine
    gateway: StripeGateway
    settings: Settings
    claim: ledger.Claim
    message_type: str = ""
    # The final status this run wrote, once a workflow succeeded or failed the event.
    final_status: str | None = None

    @property
    def point(self) -> str:
        return self.claim.recovery_point

    @property
    def progress(self) -> dict[str, Any]:
        return self.claim.progress

    def key(self, step: str) -> str:
        """The deterministic Stripe idempotency key of `step` for this event."""
        return idempotency_key(self.claim.event_id, step, self.claim.generation)

    @contextmanager
    def tx(self) -> Iterator[Session]:
        """A short transaction; no Stripe call may happen inside it."""
        with transaction(self.engine) as session:
            yield session

    @contextmanager
    def core_tx(self) -> Iterator[Connection]:
        """A short transaction on a plain connection, for Core statements only (cheaper than
        a session on the hot path); no Stripe call may happen inside it either."""
        with self.engine.begin() as conn:
            yield conn

    def checkpoint(self, session: ledger.Executor, point: str, **progress: Any) -> None:
        """Record that the workflow reached `point`, in the caller's transaction."""
        ledger.checkpoint(session, self.claim, point, self.settings.lease_seconds, **progress)
        self.claim = ledger.Claim(
            **{
                **self.claim.__dict__,
                "recovery_point": point,
                "progress": {**self.claim.progress, **progress},
            }
        )

    def begin_write(self, session: ledger.Executor, point: str, **progress: Any) -> None:
        """Checkpoint just before a Stripe write whose outcome may become unknown, noting
        when its idempotency key was first used."""
        self.checkpoint(session, point, write_started_at=ledger.now().isoformat(), **progress)

    def key_may_have_expired(self) -> bool:
        """True when Stripe may have forgotten the key of the pending write: its outcome
        must then be looked up by metadata rather than replayed."""
        started = self.progress.get("write_started_at")
        if started is None:
            return False
        age = ledger.now() - datetime.fromisoformat(started)
        return age.total_seconds() > self.settings.stripe_key_window_seconds

    def succeed(self, session: ledger.Executor, result: dict[str, Any]) -> None:
        ledger.succeed(session, self.claim, result)
        self.final_status = "succeeded"

    def fail(
        self,
        session: ledger.Executor,
        error: PermanentError,
        result: dict[str, Any] | None = None,
    ) -> None:
        ledger.fail(session, self.claim, error.code, error.message, result)
        self.final_status = "failed"


def lock_user(session: Session, user_id: str) -> None:
    """Serialise card and customer decisions of one user until the transaction ends."""
    session.execute(
        text("SELECT pg_advisory_xact_lock(hashtext('payworker:user:' || :user_id))"),
        {"user_id": user_id},
    )


def customer_of(session: Session, user_id: str) -> Customer:
    """The user's customer. Raises PrerequisiteMissing until user_registered is processed."""
    customer = session.get(Customer, user_id)
    if customer is None:
        raise PrerequisiteMissing(
            f"user {user_id!r} has no customer yet (user_registered not processed)",
            code="customer_not_found",
        )
    return customer


def card_of(session: Session, user_id: str, card_id: str, *, active: bool = True) -> Card:
    """A card of this user.

    Raises:
        PermanentError: `card_not_found` when the card is another user's, or removed.
        PrerequisiteMissing: `card_not_found` when the card is unknown so far.
    """
    card = session.get(Card, card_id)
    if card is None:
        raise PrerequisiteMissing(
            f"card {card_id!r} is not known yet (card_token_received not processed)",
            code="card_not_found",
        )
    if card.user_id != user_id:
        raise PermanentError(f"card {card_id!r} does not belong to user", code="card_not_found")
    if active and card.removed_at is not None:
        raise PermanentError(f"card {card_id!r} has been removed", code="card_not_found")
    return card


def default_card_of(session: Session, user_id: str) -> Card:
    """The user's active default card. Raises PrerequisiteMissing while the user has none."""
    card = session.scalars(
        select(Card).where(Card.user_id == user_id, Card.is_default, Card.removed_at.is_(None))
    ).one_or_none()
    if card is None:
        raise PrerequisiteMissing(
            f"user {user_id!r} has no default card yet", code="card_not_found"
        )
    return card


def make_default(session: Session, user_id: str, card_id: str) -> str | None:
    """Flip the user's default card in Postgres; returns the previous default's id."""
    previous = session.scalars(
        select(Card).where(Card.user_id == user_id, Card.is_default, Card.removed_at.is_(None))
    ).one_or_none()
    if previous is not None and previous.stripe_card_id == card_id:
        return card_id
    if previous is not None:
        previous.is_default = False
        session.flush()  # the one-default index must never see two defaults
    card = session.get(Card, card_id)
    if card is not None and card.removed_at is None:
        card.is_default = True
    return previous.stripe_card_id if previous is not None else None


def active_card_count(session: Session, user_id: str) -> int:
    stmt = select(func.count()).where(Card.user_id == user_id, Card.removed_at.is_(None))
    return int(session.scalar(stmt) or 0)
