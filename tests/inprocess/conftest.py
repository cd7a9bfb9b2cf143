"""The in-process tier: each workflow's phases driven by `tasks.runner.run_event` against
the real, migrated Postgres of `tests/conftest.py` and an in-process Stripe
(`fake_gateway.FakeGateway`). No broker, no worker process, no HTTP: a test claims an
event as the Celery task does (`db.claims.claim` with the task's `NewEvent`), hands the
claim to the runner and reads what it wrote. Nothing of the database is mocked.

Isolation: every test commits for real and keeps apart by its ids, not by a rolled-back
transaction. The runner opens several transactions per event (`engine.begin()` per phase,
`engine.connect()` for reads) and what they mean depends on real commits: the lease is
checked against committed rows, a failed phase must roll back alone, Postgres' `now()`
(the event's `created_at`, the prerequisite window) must be the statement's time, not a
test-long transaction's. Squeezing that into savepoints of one connection would change
what is being tested. So ids are unique instead: `ids(name)` (tests/conftest.py) suffixes
every event and user id with the test's own random suffix, and the fake names its Stripe
objects with fresh uuids. The session's database is dropped at the end of the session.

Time is moved the way it passes, in the rows: `rows.backdate_receipt` (the event was
received earlier: the prerequisite window) and `rows.age_pending_write` (the pending
write's idempotency key was first used a day ago: Stripe has forgotten it).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import Engine

from core.settings import Settings
from db import users
from db.ledger import now
from db.models import CardKind
from tasks.ratelimit import LocalLimiter, Pace
from tasks.resources import Resources
from tasks.sealing import TokenSealer
from tests.inprocess._support import (
    LEASE_SECONDS,
    MAX_ATTEMPTS,
    PREREQUISITE_WAIT_SECONDS,
    RETRY_BACKOFF_BASE,
    RETRY_BACKOFF_MAX,
    Deliveries,
    RecordingTelemetry,
    Rows,
)
from tests.inprocess.fake_gateway import VISA, FakeGateway


@pytest.fixture
def settings(database_url: str) -> Settings:
    """Every value these tests depend on, explicit: arguments win over the environment."""
    return Settings(
        DATABASE_URL=database_url,
        STRIPE_API_KEY="sk_test_inprocess",
        PAYWORKER_QUEUE="payments_inprocess",
        PAYWORKER_MAX_ATTEMPTS=MAX_ATTEMPTS,
        PAYWORKER_RETRY_BACKOFF_BASE=RETRY_BACKOFF_BASE,
        PAYWORKER_RETRY_BACKOFF_MAX=RETRY_BACKOFF_MAX,
        PAYWORKER_PREREQUISITE_WAIT_SECONDS=PREREQUISITE_WAIT_SECONDS,
        PAYWORKER_LEASE_SECONDS=LEASE_SECONDS,
        PAYWORKER_STRIPE_KEY_WINDOW_SECONDS=23 * 3600,
        PAYWORKER_STRIPE_RATE=1000,
    )


@pytest.fixture
def gateway() -> FakeGateway:
    return FakeGateway()


@pytest.fixture
def telemetry() -> RecordingTelemetry:
    return RecordingTelemetry()


@pytest.fixture
def res(
    settings: Settings, engine: Engine, gateway: FakeGateway, telemetry: RecordingTelemetry
) -> Resources:
    """What a task is handed, with the fake in place of the Stripe gateway."""
    pace = Pace(rate=settings.stripe_rate_limit, burst=1, max_wait=1.0, penalty_seconds=1.0)
    return Resources(
        settings=settings,
        engine=engine,
        gateway=gateway,  # type: ignore[arg-type]  # StripeGateway's methods (test_fake_gateway)
        sealer=TokenSealer("inprocess-seal-secret"),
        limiter=LocalLimiter(pace),
        telemetry=telemetry,
    )


@pytest.fixture
def deliveries(res: Resources) -> Deliveries:
    return Deliveries(res)


@pytest.fixture
def rows(engine: Engine) -> Rows:
    return Rows(engine)


@pytest.fixture
def customer(engine: Engine, gateway: FakeGateway) -> Callable[[str], str]:
    """Factory: a user whose user_registered was processed (a customer on Stripe and in
    Postgres); returns the Stripe customer id."""

    def make(user_id: str) -> str:
        customer_id = gateway.add_customer(f"{user_id}@example.com")
        with engine.begin() as conn:
            users.add_customer(
                conn,
                user_id=user_id,
                stripe_customer_id=customer_id,
                email=f"{user_id}@example.com",
                name=None,
                event_id=f"setup-{user_id}",
            )
        return customer_id

    return make


@pytest.fixture
def card(engine: Engine, gateway: FakeGateway) -> Callable[..., str]:
    """Factory: a card attached on Stripe and recorded in Postgres (as a processed
    card_token_received leaves it); the first of a user is its default on both sides.
    Returns the card id."""

    def make(user_id: str, customer_id: str, number: str = VISA) -> str:
        card_id = gateway.add_card(customer_id, number)
        details = gateway.cards[card_id].details
        with engine.begin() as conn:
            first = users.active_card_count(conn, user_id) == 0
            users.add_card(
                conn,
                users.NewCard(
                    stripe_card_id=card_id,
                    user_id=user_id,
                    fingerprint=details.fingerprint,
                    brand=details.brand,
                    last4=details.last4,
                    exp_month=details.exp_month,
                    exp_year=details.exp_year,
                    is_default=first,
                    event_id=f"setup-{card_id}",
                ),
            )
        return card_id

    return make


@pytest.fixture
def remove_card(engine: Engine, gateway: FakeGateway) -> Callable[[str, str, str], None]:
    """Factory: a card removed on Stripe and in Postgres (as a processed card_removed
    leaves it)."""

    def remove(user_id: str, customer_id: str, card_id: str) -> None:
        gateway.remove_card(customer_id, card_id)
        with engine.begin() as conn:
            users.lock_user(conn, user_id)
            users.mark_removed(conn, card_id, now())

    return remove


@pytest.fixture
def pm_card(engine: Engine, gateway: FakeGateway) -> Callable[..., str]:
    """Factory: a PaymentMethod attached on Stripe and recorded in Postgres (as a processed
    payment_method_received leaves it); the first card of a user is its default on both
    sides (the invoice default on Stripe). Returns the PaymentMethod's id."""

    def make(user_id: str, customer_id: str, number: str = VISA) -> str:
        pm_id = gateway.add_payment_method(number, customer_id=customer_id)
        details = gateway.payment_methods[pm_id].details
        with engine.begin() as conn:
            first = users.active_card_count(conn, user_id) == 0
            users.add_card(
                conn,
                users.NewCard(
                    stripe_card_id=pm_id,
                    user_id=user_id,
                    fingerprint=details.fingerprint,
                    brand=details.brand,
                    last4=details.last4,
                    exp_month=details.exp_month,
                    exp_year=details.exp_year,
                    is_default=first,
                    event_id=f"setup-{pm_id}",
                    kind=CardKind.PAYMENT_METHOD,
                ),
            )
        if first:
            gateway.customers[customer_id].default_payment_method = pm_id
        return pm_id

    return make
