"""Neither STRIPE_API_KEY nor a full card token ever appears in a log line, a task's shown
arguments (Flower's task events) or the ledger; tokens are shown masked (`tok_…abcd`)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import pytest
from celery.events.event import get_exchange
from kombu import Queue
from sqlalchemy import text

API_KEY = "sk_test_SECRETKEYMARKER123"
TERMINAL = ("succeeded", "failed", "dead")


def _uid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:10]}"


def _rows(engine: Any, event_ids: list[str]) -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        found = conn.execute(
            text("SELECT * FROM payment_events WHERE event_id = ANY(:ids)"), {"ids": event_ids}
        ).mappings()
        return {row["event_id"]: dict(row) for row in found}


def _wait_final(engine: Any, *event_ids: str, timeout: float = 30) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    rows: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        rows = _rows(engine, list(event_ids))
        if len(rows) == len(event_ids) and all(r["status"] in TERMINAL for r in rows.values()):
            return rows
        time.sleep(0.1)
    raise AssertionError(f"events not final within {timeout}s: "
                         f"{ {e: rows.get(e, {}).get('status') for e in event_ids} }")


def _masked(token: str) -> str:
    return f"tok_…{token[-4:]}"


def _rows_containing(engine: Any, needle: str) -> list[str]:
    """Every row of every payworker table whose text contains `needle`."""
    hits = []
    with engine.connect() as conn:
        for table in ("payment_events", "customers", "cards", "charges"):
            found = conn.execute(
                text(f"SELECT t::text FROM {table} t WHERE t::text LIKE :pattern"),
                {"pattern": f"%{needle}%"},
            ).scalars()
            hits.extend(f"{table}: {row[:200]}" for row in found)
    return hits


@contextmanager
def task_events(upstream: Any) -> Iterator[Any]:
    """Capture the task events workers send for Flower. On Redis the `celeryev` exchange is
    a PUB/SUB fanout, so the subscription must be live before anything is published."""
    captured: list[dict[str, Any]] = []

    def on_message(body: Any, message: Any) -> None:
        captured.extend(body if isinstance(body, list) else [body])  # task.multi batches
        message.ack()

    with upstream.connection_for_read() as conn:
        queue = Queue(f"test-events-{uuid.uuid4().hex[:8]}", get_exchange(conn),
                      routing_key="task.#", auto_delete=True, durable=False)

        def drain(seconds: float) -> None:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                with suppress(TimeoutError):
                    conn.drain_events(timeout=0.2)

        class Events(list):  # type: ignore[type-arg]
            def until(self, predicate: Any, timeout: float = 15) -> None:
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline and not any(map(predicate, captured)):
                    drain(0.2)
                self[:] = captured

        try:
            with conn.Consumer(queue, callbacks=[on_message], accept=["json"]):
                drain(0.3)  # subscribes
                yield Events()
        finally:
            queue(conn.default_channel).delete()


@pytest.fixture(scope="module")
def secret_worker(start_worker):
    """A worker configured with a recognisable API key."""
    return start_worker(concurrency=2, STRIPE_API_KEY=API_KEY)


def _send(upstream: Any, worker: Any, message_type: str, **kwargs: Any) -> str:
    return str(upstream.send_task(f"payments.{message_type}", kwargs=kwargs,
                                  queue=worker.queue).id)


def test_key_and_tokens_never_logged_stored_or_shown(
    upstream, secret_worker, engine, stripe_fake
):
    # Given a worker with a recognisable API key, and a user who registers, adds a card,
    # is charged, sends a malformed card message and a token Stripe does not know
    user = _uid("sec-user")
    reg, tok, chg, bad, ghost = (_uid(n) for n in ("sec-reg", "sec-tok", "sec-chg",
                                                     "sec-bad", "sec-ghost"))
    token = stripe_fake.create_card_token("4242424242424242")
    bad_token = stripe_fake.create_card_token("5555555555554444")
    ghost_token = "tok_doesnotexistSECRET987"
    tokens = [token, bad_token, ghost_token]

    # When the messages are processed, with Flower's event stream listening
    with task_events(upstream) as events:
        _send(upstream, secret_worker, "user_registered", event_id=reg, user_id=user,
              email="secret@example.com")
        _wait_final(engine, reg)
        card_task = _send(upstream, secret_worker, "card_token_received", event_id=tok,
                          user_id=user, token=token)
        bad_task = _send(upstream, secret_worker, "card_token_received", event_id=bad,
                         user_id=user, token=bad_token, make_default="yes")
        _send(upstream, secret_worker, "card_token_received", event_id=ghost, user_id=user,
              token=ghost_token)
        _wait_final(engine, tok, bad, ghost)
        _send(upstream, secret_worker, "charge_requested", event_id=chg, user_id=user,
              amount=1234, currency="usd")
        rows = _wait_final(engine, reg, tok, chg, bad, ghost)
        events.until(lambda e: e.get("type") == "task-received" and e.get("uuid") == bad_task)

    assert rows[tok]["status"] == "succeeded" and rows[chg]["status"] == "succeeded", rows
    assert rows[bad]["error_code"] == "invalid_message", rows[bad]
    assert rows[ghost]["error_code"] == "stripe_invalid_request", rows[ghost]

    # Then the worker log shows the work but neither the key nor a full token
    log = secret_worker.log()
    assert f"event_id={chg}" in log and "Stripe API response" in log
    assert "SECRETKEYMARKER123" not in log
    leaked = [t for t in tokens if t in log]
    assert not leaked, leaked
    # ... no table holds a full token or the key, and the ledger shows the tokens masked
    for secret in [*tokens, "SECRETKEYMARKER123"]:
        assert _rows_containing(engine, secret) == [], secret
    assert rows[tok]["payload"]["token"] == _masked(token)
    assert _masked(bad_token) in json.dumps(rows[bad]["payload"], ensure_ascii=False)
    assert ghost_token not in (rows[ghost]["error_message"] or "")
    # ... and Flower's task-received events show masked kwargs
    received = {e["uuid"]: e for e in events if e.get("type") == "task-received"}
    assert card_task in received and bad_task in received, sorted(received)
    for task_id, raw in ((card_task, token), (bad_task, bad_token)):
        shown = received[task_id]["kwargs"]
        assert raw not in shown, shown
        assert _masked(raw) in shown, shown
    flower_view = json.dumps(list(events), ensure_ascii=False)
    assert not [t for t in tokens if t in flower_view]
    assert "SECRETKEYMARKER123" not in flower_view


def test_token_waiting_for_its_customer_never_reaches_the_log(
    upstream, secret_worker, engine, stripe_fake
):
    # Given a card token that arrives long before its user's registration
    user, reg, tok = _uid("sec-late"), _uid("sec-latereg"), _uid("sec-latetok")
    token = stripe_fake.create_card_token("4000056655665556")
    _send(upstream, secret_worker, "card_token_received", event_id=tok, user_id=user,
          token=token)
    time.sleep(3)  # it retries, waiting for the customer
    # When the registration finally arrives
    _send(upstream, secret_worker, "user_registered", event_id=reg, user_id=user,
          email="late@example.com")
    _wait_final(engine, reg)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _rows(engine, [tok])[tok]["status"] not in TERMINAL:
        time.sleep(0.1)
    # Then nothing the worker logged while it waited (or gave up) shows the token ...
    log = secret_worker.log()
    assert f"event_id={tok}" in log
    assert token not in log, [line for line in log.splitlines() if token in line][:3]
    # ... and the card was attached once the customer existed
    row = _rows(engine, [tok])[tok]
    assert row["status"] == "succeeded", row
