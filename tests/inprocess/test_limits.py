"""The business limits of charge_requested at `started`, before anything reaches Stripe:
PAYWORKER_MAX_AMOUNT (`amount_over_limit`) and PAYWORKER_USER_CHARGE_LIMIT
(`velocity_limit`, counted under the user's advisory lock); and the text a database error
leaves in the ledger, which must carry no value of the failed statement."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import Engine, text

from core.errors import database_error_text, translate
from core.settings import Settings
from db import users
from db.session import get_engine
from tasks.messages import ChargeRequested
from tasks.resources import Resources
from tests.inprocess._support import Deliveries, Rows
from tests.inprocess.fake_gateway import DECLINED_AT_CHARGE, FakeGateway


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """These tests pin the Charges API (PAYWORKER_CHARGE_API=charges): the PaymentIntents
    path has its own (test_payment_intents.py)."""
    return settings.model_copy(update={"charge_api": "charges"})


def limited(res: Resources, **settings: Any) -> Deliveries:
    """Deliveries by a worker configured with these settings."""
    return Deliveries(replace(res, settings=res.settings.model_copy(update=settings)))


def charge(
    ids: Callable[[str], str], n: int = 0, amount: int = 2000, currency: str = "usd"
) -> ChargeRequested:
    return ChargeRequested(
        event_id=ids(f"charge{n}"), user_id=ids("user"), amount=amount, currency=currency
    )


@pytest.fixture
def payer(
    ids: Callable[[str], str], customer: Callable[[str], str], card: Callable[..., str]
) -> str:
    """The test's user, with a customer and a default card."""
    card(ids("user"), customer(ids("user")))
    return ids("user")


# ---- PAYWORKER_MAX_AMOUNT ----------------------------------------------------------------


def test_an_amount_over_the_currency_limit_fails_before_stripe(
    ids: Callable[[str], str],
    res: Resources,
    gateway: FakeGateway,
    rows: Rows,
    payer: str,
) -> None:
    # Given a worker with a USD limit of 50.00
    deliveries = limited(res, max_amount={"usd": 5000})
    msg = charge(ids, amount=5001)

    # When a charge of 50.01 USD is requested
    outcome = deliveries.deliver(msg)

    # Then the event fails with amount_over_limit, recorded like the other amount rules:
    # no Stripe call, no charges row
    assert outcome["status"] == "failed" and outcome["error_code"] == "amount_over_limit"
    assert gateway.calls == []
    event = rows.event(msg.event_id)
    assert (event["status"], event["recovery_point"]) == ("failed", "started")
    assert event["error_message"] == (
        "amount 5001 is over the USD limit of 5000 (PAYWORKER_MAX_AMOUNT)"
    )
    assert event["result"] == {
        "decline_code": None, "failure_code": "amount_over_limit", "charge_id": None,
    }  # fmt: skip
    assert rows.charge(msg.event_id) is None


def test_the_limit_itself_and_other_currencies_pass(
    ids: Callable[[str], str],
    res: Resources,
    gateway: FakeGateway,
    rows: Rows,
    payer: str,
) -> None:
    # Given a USD limit only
    deliveries = limited(res, max_amount={"usd": 5000})
    # When a charge of exactly the limit, and a large EUR one, are requested
    at_limit, other = charge(ids, 1, amount=5000), charge(ids, 2, amount=9_000_000, currency="eur")
    # Then both are charged: the limit is inclusive, an unlisted currency is unlimited
    assert deliveries.deliver(at_limit)["status"] == "succeeded"
    assert deliveries.deliver(other)["status"] == "succeeded"
    assert len(gateway.charges) == 2


def test_stripes_own_rules_come_first(
    ids: Callable[[str], str],
    res: Resources,
    rows: Rows,
    payer: str,
) -> None:
    deliveries = limited(res, max_amount={"usd": 5000})
    outcome = deliveries.deliver(charge(ids, amount=10**9))
    assert outcome["error_code"] == "amount_too_large"


# ---- PAYWORKER_USER_CHARGE_LIMIT -----------------------------------------------------------


def test_a_charge_over_the_users_hourly_limit_fails_before_stripe(
    ids: Callable[[str], str],
    res: Resources,
    gateway: FakeGateway,
    rows: Rows,
    payer: str,
) -> None:
    # Given a limit of 2 charges per user and hour, and a user charged twice
    deliveries = limited(res, user_charge_limit=2)
    for n in (1, 2):
        assert deliveries.deliver(charge(ids, n))["status"] == "succeeded"

    # When a third charge is requested
    third = charge(ids, 3)
    outcome = deliveries.deliver(third)

    # Then it fails with velocity_limit, without a Stripe call or a charges row
    assert outcome["status"] == "failed" and outcome["error_code"] == "velocity_limit"
    assert len(gateway.calls_to("create_charge")) == 2
    event = rows.event(third.event_id)
    assert (event["status"], event["recovery_point"]) == ("failed", "started")
    assert event["error_message"] == (
        "the user has 2 charges pending or succeeded in the last hour; the limit is 2"
        " (PAYWORKER_USER_CHARGE_LIMIT)"
    )
    assert event["result"]["failure_code"] == "velocity_limit"
    assert rows.charge(third.event_id) is None


def test_failed_charges_and_charges_older_than_an_hour_do_not_count(
    ids: Callable[[str], str],
    res: Resources,
    engine: Engine,
    rows: Rows,
    customer: Callable[[str], str],
    card: Callable[..., str],
) -> None:
    # Given a limit of 1, a user whose declined charge failed, and an hour-old success
    user = ids("user")
    declining = card(user, customer(user), DECLINED_AT_CHARGE)
    deliveries = limited(res, user_charge_limit=1)
    declined = charge(ids, 1)
    assert deliveries.deliver(declined)["error_code"] == "card_declined"
    with engine.begin() as conn:  # an earlier, succeeded charge, 61 minutes ago
        conn.execute(
            text(
                "INSERT INTO payment_events (event_id, type, user_id, payload, payload_hash,"
                " status, recovery_point, progress, queue) VALUES (:e, 'charge_requested', :u,"
                " '{}', 'x', 'succeeded', 'charge_creating', '{}', 'q')"
            ),
            {"e": ids("old"), "u": user},
        )
        conn.execute(
            text(
                "INSERT INTO charges (event_id, user_id, amount, currency, stripe_card_id, status,"
                " created_at) VALUES (:e, :u, 100, 'usd', :c, 'succeeded',"
                " now() - interval '61 minutes')"
            ),
            {"e": ids("old"), "u": user, "c": declining},
        )

    # When the user's next charge is requested (on a card that now pays)
    ok = charge(ids, 2)
    deliveries.res.gateway.stop_declining(declining)  # type: ignore[attr-defined]
    outcome = deliveries.deliver(ok)

    # Then neither the failed charge nor the old one counts
    assert outcome["status"] == "succeeded", rows.event(ok.event_id)


def test_two_concurrent_charges_at_the_limit_cannot_both_pass(
    ids: Callable[[str], str],
    res: Resources,
    engine: Engine,
    gateway: FakeGateway,
    rows: Rows,
    payer: str,
) -> None:
    # Given a limit of 2 and a user with one charge: room for exactly one more
    deliveries = limited(res, user_charge_limit=2)
    assert deliveries.deliver(charge(ids, 0))["status"] == "succeeded"
    racing = [charge(ids, 1), charge(ids, 2)]
    outcomes: dict[str, Any] = {}

    # When two charges of that user run at the same moment (both held at the user's lock
    # until they have both reached it, then let go together)
    with engine.connect() as holder:
        holder.begin()
        users.lock_user(holder, payer)
        threads = [
            threading.Thread(
                target=lambda m=m: outcomes.__setitem__(m.event_id, deliveries.deliver(m))
            )
            for m in racing
        ]
        for thread in threads:
            thread.start()
        _wait_for_lock_waiters(engine, 2)
        holder.commit()
    for thread in threads:
        thread.join(timeout=30)

    # Then one is charged and the other fails with velocity_limit: the second counted
    # after the first had written its pending row
    codes = sorted(str(o.get("error_code")) for o in outcomes.values())
    assert codes == ["None", "velocity_limit"], outcomes
    assert len(gateway.calls_to("create_charge")) == 2
    with engine.connect() as conn:
        count = conn.execute(
            text("SELECT count(*) FROM charges WHERE user_id = :u"), {"u": payer}
        ).scalar()
    assert count == 2


def _wait_for_lock_waiters(engine: Engine, count: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            waiting = conn.execute(
                text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
            ).scalar()
        if waiting == count:
            return
        time.sleep(0.02)
    raise AssertionError(f"{count} charges did not reach the user's lock in {timeout}s")


def test_without_a_limit_no_lock_is_taken_and_nothing_is_counted(
    ids: Callable[[str], str],
    deliveries: Deliveries,
    engine: Engine,
    payer: str,
) -> None:
    # Given no limit configured, and the user's lock held by someone else
    with engine.connect() as holder:
        holder.begin()
        users.lock_user(holder, payer)
        # When a charge is delivered  /  Then it does not wait for the lock
        assert deliveries.deliver(charge(ids))["status"] == "succeeded"
        holder.rollback()


# ---- database errors leave no values in the ledger ---------------------------------------------


def test_a_database_errors_text_in_last_error_has_no_bound_values(
    ids: Callable[[str], str],
    res: Resources,
    database_url: str,
    engine: Engine,
    rows: Rows,
    payer: str,
) -> None:
    # Given the worker's own engine (hide_parameters) and a charge whose pending row cannot
    # be written: a row under its event_id exists already (a unique violation, whose DETAIL
    # quotes the key's value)
    deliveries = Deliveries(replace(res, engine=get_engine(database_url)))
    msg = ChargeRequested(
        event_id=ids("charge-boundvalue"), user_id=payer, amount=4242, currency="usd"
    )
    claim = deliveries.claim(msg)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO charges (event_id, user_id, amount, currency, stripe_card_id, status)"
                " VALUES (:e, 'someone', 1, 'usd', 'card_x', 'failed')"
            ),
            {"e": msg.event_id},
        )

    # When the event runs
    outcome = deliveries.run(msg, claim)

    # Then it is retried with a last_error naming the error, but no value of the statement
    assert outcome["status"] == "retry_scheduled"
    last_error = rows.event(msg.event_id)["last_error"]
    assert last_error.startswith("internal_error: IntegrityError: UniqueViolation [23505]")
    assert "charges" in last_error
    for value in (msg.event_id, "boundvalue", payer, "4242"):
        assert value not in last_error, last_error


@pytest.mark.parametrize(
    ("statement", "params"),
    [
        ("SELECT CAST(:v AS integer)", {"v": "SECRETVALUE"}),
        ("SELECT CAST(:v AS jsonb)", {"v": '{"a": "SECRETVALUE \\u0000"}'}),
        (
            "INSERT INTO charges (event_id, user_id, amount, currency, stripe_card_id)"
            " VALUES ('nope', 'SECRETVALUE', -1, 'usd', 'c')",
            {},
        ),
        ("SELECT 1 / 0 WHERE :v <> ''", {"v": "SECRETVALUE"}),
    ],
    ids=["cast", "jsonb", "check constraint", "division"],
)
def test_database_error_text_never_quotes_the_data(
    statement: str, params: dict[str, str], database_url: str
) -> None:
    # Given statements whose errors Postgres reports with the value in the message, the
    # DETAIL ("Failing row contains (…)") or the CONTEXT ("JSON data, line 1: …")
    with get_engine(database_url).connect() as conn:
        with pytest.raises(Exception) as info:
            conn.execute(text(statement), params)
        conn.rollback()
    # When translated into our error  /  Then its text keeps the kind of error, not the data
    error = translate(info.value)
    assert "SECRETVALUE" not in str(error) and "SECRETVALUE" not in error.message
    assert "[2" in database_error_text(info.value)  # the SQLSTATE  # type: ignore[arg-type]
