"""The sweeper: retries scheduled in the ledger are published when due, an event whose
message was lost is re-driven, and card tokens are kept sealed only while needed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import text

from tests.conftest import ROOT, WorkerProcess, event_rows, worker_env

VISA = "4242424242424242"


def wait_until(predicate: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def test_waiting_event_is_redriven_until_its_prerequisite_arrives(
    publish, wait_for, engine, stripe_fake, ids
):
    # Given a charge for a user who is not registered yet
    user, reg, tok, chg = ids("user"), ids("reg"), ids("tok"), ids("chg")
    publish("charge_requested", event_id=chg, user_id=user, amount=700, currency="usd")
    # When the sweeper has re-driven it at least twice while it waits
    row = wait_until(lambda: (r := event_rows(engine, [chg]).get(chg)) and r["redrives"] >= 2
                     and r)
    assert row["status"] == "processing"  # still waiting, neither failed nor charged
    # and then the registration and the card arrive
    publish("user_registered", event_id=reg, user_id=user, email="late@example.com")
    publish("card_token_received", event_id=tok, user_id=user,
            token=stripe_fake.create_card_token(VISA))
    # Then the next re-drive charges it, once
    rows = wait_for(reg, tok, chg)
    assert rows[chg]["status"] == "succeeded", rows[chg]
    customer = rows[reg]["result"]["customer_id"]
    assert [c["id"] for c in stripe_fake.list_charges(customer)] == [
        rows[chg]["result"]["charge_id"]
    ]


def test_card_token_is_sealed_while_needed_and_erased_after(
    publish, wait_for, engine, stripe_fake, ids
):
    # Given a card token that must wait for its customer
    user, reg, tok = ids("user"), ids("reg"), ids("tok")
    token = stripe_fake.create_card_token(VISA)
    publish("card_token_received", event_id=tok, user_id=user, token=token)
    waiting = wait_until(lambda: event_rows(engine, [tok]).get(tok))
    # Then the ledger keeps it only sealed: never the plain token
    assert waiting["sealed_token"] and token not in waiting["sealed_token"]
    assert token not in str(waiting["payload"])
    # When the customer arrives and the card is attached
    publish("user_registered", event_id=reg, user_id=user, email="s@example.com")
    row = wait_for(reg, tok)[tok]
    # Then the sealed token is erased
    assert row["status"] == "succeeded" and row["sealed_token"] is None


def test_sweep_command_redrives_an_event_whose_message_was_lost(
    engine, database_url, broker_url, stripe_fake, start_worker, upstream, ids
):
    # Given an event recorded on a queue nobody consumes, due for a retry whose message
    # was lost (the worker that scheduled it is gone)
    queue = f"payments_orphan_{uuid.uuid4().hex[:8]}"
    worker: WorkerProcess = start_worker(queue=queue)
    user, reg = ids("user"), ids("reg")
    upstream.send_task("payments.user_registered", queue=queue,
                       kwargs={"event_id": reg, "user_id": user, "email": "o@example.com"})
    wait_until(lambda: (r := event_rows(engine, [reg]).get(reg)) and r["status"] == "succeeded")
    worker.stop()
    with engine.begin() as conn:
        conn.execute(text(
            "UPDATE payment_events SET status = 'processing', completed_at = NULL,"
            " recovery_point = 'started', next_attempt_at = now() - interval '1 second'"
            " WHERE event_id = :e"), {"e": reg})
    # When an operator runs one sweep by hand
    env = worker_env(database_url, broker_url, stripe_fake.url, queue)
    done = subprocess.run([sys.executable, "-m", "worker.cli", "sweep"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    # Then it reports the re-drive, and a new worker finishes the event from the message
    assert done.returncode == 0, done.stderr
    assert "re-drove 1 event(s)" in done.stdout and "retry_due: 1" in done.stdout
    start_worker(queue=queue)
    row = wait_until(lambda: (r := event_rows(engine, [reg]).get(reg))
                     and r["status"] == "succeeded" and r)
    # with the existing customer adopted, not a second one
    assert row["result"]["existing"] is True
    assert row["redrives"] == 1


def test_console_script_exists() -> None:
    # The sweep command is reachable the way operators call it
    done = subprocess.run([os.path.join(os.path.dirname(sys.executable), "payworker"),
                           "sweep", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "sweeper" in done.stdout
