"""Structured logs: in JSON mode every task line is a JSON object carrying the task's
bound fields, and no line of a whole batch with faults leaks the API key or a card token."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest

from tests.conftest import WorkerProcess

API_KEY = "sk_test_LOGSCANMARKER987"
TOKEN = re.compile(r"tok_[A-Za-z0-9]{6,}")


pytestmark = pytest.mark.usefixtures("no_faults")


@pytest.fixture(scope="module")
def json_worker(start_worker: Callable[..., WorkerProcess]) -> WorkerProcess:
    return start_worker(PAYWORKER_LOG_FORMAT="json", STRIPE_API_KEY=API_KEY,
                        PAYWORKER_MAX_ATTEMPTS="20")


def test_batch_with_faults_logs_json_with_bound_fields_and_no_secrets(
    publish, wait_for, stripe_fake, ids, json_worker
):
    # Given Stripe failing a third of the requests in several ways
    stripe_fake.inject(method="POST", path="^/v1/payment_intents$", status=500, when="after",
                       probability=0.3)
    stripe_fake.inject(method="POST", path="^/v1/customers$", status=429, probability=0.3)
    stripe_fake.inject(path="^/v1/tokens/", status=503, probability=0.3)
    q = json_worker.queue
    tokens, events = [], []
    # When a batch of users, cards (one duplicated) and charges goes through
    for n in range(4):
        user = ids(f"user{n}")
        reg, tok, dup, chg = (ids(f"{p}{n}") for p in ("reg", "tok", "dup", "chg"))
        token, again = stripe_fake.create_card_token(), stripe_fake.create_card_token()
        tokens += [token, again]
        publish("user_registered", queue=q, event_id=reg, user_id=user, email="l@example.com")
        publish("card_token_received", queue=q, event_id=tok, user_id=user, token=token)
        publish("card_token_received", queue=q, event_id=dup, user_id=user, token=again)
        publish("charge_requested", queue=q, event_id=chg, user_id=user, amount=999,
                currency="usd")
        events += [reg, tok, dup, chg]
    rows = wait_for(*events, timeout=120)
    assert {r["status"] for r in rows.values()} == {"succeeded"}, rows
    stripe_fake.clear_faults()

    # Then no line anywhere holds the key or a full token
    log = json_worker.log()
    assert API_KEY not in log
    for token in tokens:
        assert token not in log
    assert not [m for m in TOKEN.findall(log) if m in tokens]
    # and every log line written during a task is JSON carrying its bound fields
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    processing = [r for r in records if r.get("event") == "processing"]
    assert len(processing) >= len(events)
    for record in processing:
        assert {"event_id", "task_id", "user_id", "attempt", "timestamp", "level"} <= set(record)
    stripe_lines = [r for r in records if r.get("logger") == "stripe"]
    assert stripe_lines, "the Stripe SDK's lines go through the same formatter"
    assert all("event_id" in r and "task_id" in r for r in stripe_lines)
    retried = [r for r in records if r.get("event") == "retry scheduled"]
    assert retried, "the fault mix caused retries, each logged with its event"
    assert all(r.get("event_id") in events for r in retried)
