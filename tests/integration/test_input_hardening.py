"""The edge of the contract through a real worker: free text carrying a card number, a
message over the size limit, ids with control characters, 2,000 unknown kwargs, the
business limits (amount_over_limit, velocity_limit), the Stripe SDK's console log, and a
live key sent to another API base. What is refused is recorded as failed, and what it
carried stays out of the ledger, the error and the worker's log."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text

from tests.conftest import ROOT, TERMINAL, event_rows, worker_env

MAX_AMOUNT_USD = 5000
CHARGES_PER_HOUR = 2
PAN = "4242424242424242"
PAN_WRITTEN = "4242 4242 4242 4242"


def _uid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def limits_worker(start_worker):
    """A worker with both business limits on, and the Stripe SDK told to print its
    debug log (STRIPE_LOG=debug) to stderr, which the worker's log file captures."""
    return start_worker(
        concurrency=2,
        PAYWORKER_MAX_AMOUNT=f"usd:{MAX_AMOUNT_USD}",
        PAYWORKER_USER_CHARGE_LIMIT=str(CHARGES_PER_HOUR),
        STRIPE_LOG="debug",
    )


@pytest.fixture(scope="module")
def send(upstream, limits_worker) -> Callable[..., str]:
    def publish(message_type: str, **kwargs: Any) -> str:
        return str(upstream.send_task(f"payments.{message_type}", kwargs=kwargs,
                                      queue=limits_worker.queue).id)

    return publish


@pytest.fixture(scope="module")
def new_payer(send, engine, stripe_fake) -> Callable[[], tuple[str, str]]:
    """Factory: a registered user with a default card; returns (user_id, card token)."""

    def make() -> tuple[str, str]:
        user, reg, tok = _uid("in-user"), _uid("in-reg"), _uid("in-tok")
        send("user_registered", event_id=reg, user_id=user, email="input@example.com")
        _final(engine, reg)
        token = stripe_fake.create_card_token(PAN)
        send("card_token_received", event_id=tok, user_id=user, token=token)
        rows = _final(engine, tok)
        assert rows[tok]["status"] == "succeeded", event_rows(engine, [tok])
        return user, token

    return make


def _final(engine: Any, *event_ids: str, timeout: float = 30) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    rows: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        rows = event_rows(engine, event_ids)
        if len(rows) == len(event_ids) and all(r["status"] in TERMINAL for r in rows.values()):
            return rows
        time.sleep(0.1)
    raise AssertionError(f"not final in {timeout}s: { {e: r['status'] for e, r in rows.items()} }")


def _row_text(engine: Any, event_id: str) -> str:
    with engine.connect() as conn:
        found = conn.execute(text("SELECT t::text FROM payment_events t WHERE event_id = :e"),
                             {"e": event_id}).scalar()
    assert found is not None, event_id
    return str(found)


def _stripe_posts(stripe_fake: Any, event_id: str) -> list[dict[str, Any]]:
    return [r for r in stripe_fake.requests(method="POST")
            if (r["idempotency_key"] or "").startswith(f"pw:{event_id}:")]


def _charge_rows(engine: Any, user_id: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(
            text("SELECT * FROM charges WHERE user_id = :u ORDER BY created_at"), {"u": user_id}
        ).mappings()]


# ---- free text ---------------------------------------------------------------------------


def test_a_card_number_in_free_text_is_refused_and_kept_out_of_ledger_error_and_log(
    send, engine, stripe_fake, limits_worker, new_payer
):
    # Given a registered user with a card
    user, _ = new_payer()
    event_id = _uid("in-pan")
    # When a charge arrives with a card number in its description and in a metadata value
    send("charge_requested", event_id=event_id, user_id=user, amount=1000, currency="usd",
         description=f"Order 42, paid with {PAN_WRITTEN}", metadata={"note": f"card {PAN}"})
    row = _final(engine, event_id)[event_id]

    # Then it fails as invalid_message, naming where and what, and never reaches Stripe
    assert (row["status"], row["error_code"]) == ("failed", "invalid_message"), row
    assert "description: refused: it holds a card number" in row["error_message"]
    assert "metadata.note: refused: the value holds a card number" in row["error_message"]
    assert _stripe_posts(stripe_fake, event_id) == []
    # ... the stored payload has both fields replaced
    assert row["payload"]["description"] == "[refused: card number]"
    assert row["payload"]["metadata"] == {"note": "[refused: card number]"}
    # ... and the number is nowhere: not in the row, the error, or the worker's log
    for shown in (PAN, PAN_WRITTEN):
        assert shown not in _row_text(engine, event_id)
        assert shown not in limits_worker.log()
    assert any(event_id in line and "invalid message recorded" in line
               for line in limits_worker.log().splitlines())


# ---- size, ids, unknown kwargs ------------------------------------------------------------


def test_a_message_of_100_kib_is_refused_by_its_size(send, engine, limits_worker):
    # Given a charge whose description makes it 100 KiB
    event_id = _uid("in-big")
    filler = "big-message-filler-" * (100 * 1024 // 19)
    # When it is published
    send("charge_requested", event_id=event_id, user_id="u1", amount=1000, currency="usd",
         description=filler)
    row = _final(engine, event_id)[event_id]
    # Then it fails as invalid_message that gives the size and the limit, not the content
    assert (row["status"], row["error_code"]) == ("failed", "invalid_message"), row
    assert "bytes of JSON, over the limit of 65536 bytes" in row["error_message"]
    assert "big-message-filler" not in _row_text(engine, event_id)
    assert len(json.dumps(row["payload"])) < 500
    assert "big-message-filler" not in limits_worker.log()


def test_ids_with_control_characters_are_invalid_and_never_shown_raw(
    send, engine, stripe_fake, limits_worker
):
    # Given a message whose user_id carries a terminal escape sequence, one whose event_id
    # is not latin-1 (it could never go into an Idempotency-Key header: it used to retry
    # until dead), and one whose event_id carries an escape sequence
    bad_user, foreign = _uid("in-esc-user"), _uid("in-заказ")
    bad_event = _uid("in-esc-evt") + "\x1b[2J\x1b[31m"
    send("user_registered", event_id=bad_user, user_id="u\x1b[31m", email="e@example.com")
    send("user_registered", event_id=foreign, user_id="u1", email="e@example.com")
    task_id = send("user_registered", event_id=bad_event, user_id="u1", email="e@example.com")
    rows = _final(engine, bad_user, foreign)

    # Then the first two are recorded as failed invalid_message under the event_id sent
    # (the unusable user_id as null), and neither reached Stripe
    for event_id, field in ((bad_user, "user_id"), (foreign, "event_id")):
        row = rows[event_id]
        assert (row["status"], row["error_code"]) == ("failed", "invalid_message"), row
        assert row["error_message"].startswith(f"{field}: String should match pattern")
        assert _stripe_posts(stripe_fake, event_id) == []
    assert rows[bad_user]["user_id"] is None
    # ... the third cannot be a ledger key: its rejection is logged, and no row written
    deadline = time.monotonic() + 15
    while f"task_id={task_id}" not in limits_worker.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert any(f"task_id={task_id}" in line and "without a readable event_id" in line
               for line in limits_worker.log().splitlines())
    assert event_rows(engine, [bad_event]) == {}
    # ... and the worker's log never shows an escape character raw
    assert "\x1b" not in limits_worker.log()


def test_two_thousand_unknown_kwargs_make_a_bounded_error(send, engine, limits_worker):
    # Given a charge with 2,000 unknown kwargs
    event_id = _uid("in-kwargs")
    extra = {f"unknown_kwarg_{i:04d}": i for i in range(2000)}
    # When it is published
    send("charge_requested", event_id=event_id, user_id="u1", amount=1000, currency="usd",
         **extra)
    row = _final(engine, event_id)[event_id]
    # Then the error lists the first ones and counts the rest, in at most 4 KiB
    assert (row["status"], row["error_code"]) == ("failed", "invalid_message"), row
    assert len(row["error_message"].encode()) <= 4096
    assert "more problems" in row["error_message"]
    # ... and so does every log line about it
    lines = [line for line in limits_worker.log().splitlines() if event_id in line]
    assert lines and max(len(line.encode()) for line in lines) < 4096 + 1024


# ---- business limits -----------------------------------------------------------------------


def test_amount_over_limit_end_to_end(send, engine, stripe_fake, new_payer):
    # Given a worker with a USD limit, and a user with a card
    user, _ = new_payer()
    over, other = _uid("in-over"), _uid("in-eur")
    # When a charge just over the limit, and a large EUR one, are published
    send("charge_requested", event_id=over, user_id=user, amount=MAX_AMOUNT_USD + 1,
         currency="usd")
    send("charge_requested", event_id=other, user_id=user, amount=MAX_AMOUNT_USD * 10,
         currency="eur")
    rows = _final(engine, over, other)
    # Then the USD one fails with amount_over_limit before Stripe, and has no charges row;
    # EUR is not limited
    assert (rows[over]["status"], rows[over]["error_code"]) == ("failed", "amount_over_limit")
    assert "PAYWORKER_MAX_AMOUNT" in rows[over]["error_message"]
    assert _stripe_posts(stripe_fake, over) == []
    assert rows[other]["status"] == "succeeded", rows[other]
    assert [c["event_id"] for c in _charge_rows(engine, user)] == [other]


def test_velocity_limit_end_to_end(send, engine, stripe_fake, new_payer):
    # Given a worker allowing 2 charges per user and hour, and a user charged twice
    user, _ = new_payer()
    first, second, third = (_uid(f"in-vel{n}") for n in (1, 2, 3))
    for event_id in (first, second):
        send("charge_requested", event_id=event_id, user_id=user, amount=1000, currency="usd")
        assert _final(engine, event_id)[event_id]["status"] == "succeeded"
    # When a third charge is published
    send("charge_requested", event_id=third, user_id=user, amount=1000, currency="usd")
    row = _final(engine, third)[third]
    # Then it fails with velocity_limit without reaching Stripe; the user has two charges
    assert (row["status"], row["error_code"]) == ("failed", "velocity_limit"), row
    assert "PAYWORKER_USER_CHARGE_LIMIT" in row["error_message"]
    assert _stripe_posts(stripe_fake, third) == []
    assert [c["event_id"] for c in _charge_rows(engine, user)] == [first, second]


# ---- small leaks ---------------------------------------------------------------------------


def test_stripe_log_debug_prints_no_token(new_payer, limits_worker):
    # Given the worker runs with STRIPE_LOG=debug, and a card token it attached
    _, token = new_payer()
    # Then the SDK's request log (whose parameters hold the token) did not reach the log raw
    log = limits_worker.log()
    assert "Stripe API response" in log  # the SDK's own lines still come, through ours
    assert token not in log


def test_a_live_key_with_another_api_base_stops_the_worker(database_url, broker_url, stripe_fake):
    # Given a live key and STRIPE_API_BASE pointing at the fake
    key = "sk_live_" + "LIVESECRET" * 3
    env = worker_env(database_url, broker_url, stripe_fake.url, _uid("in-live"),
                     STRIPE_API_KEY=key)
    # When a worker is started
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker", "worker", "--loglevel", "INFO"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    # Then it refuses to start, saying why, without printing the key
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "STRIPE_API_BASE is set while STRIPE_API_KEY is a live key" in output
    assert "LIVESECRET" not in output
    assert "ready." not in output

