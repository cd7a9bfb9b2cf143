"""Every worker sweeps, one at a time: a plain worker (no --beat, no beat process) publishes
its queue's retries as the event's own payment task, records its lead and its runs in
`payworker_duties` for `payworker status`, and erases card tokens kept past their TTL.
Real worker subprocesses, Postgres, the broker of the run and the Stripe fake."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, text

from stripe_fake import FakeStripe
from tests.conftest import ROOT, WorkerProcess, duty_row, event_rows, leader_pid

CHARGES = "^/v1/payment_intents$"
ATTACH = "^/v1/customers/[^/]+/sources$"
PAYWORKER = os.path.join(os.path.dirname(sys.executable), "payworker")

pytestmark = pytest.mark.usefixtures("no_faults")


def wait_until(predicate: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what}: not met within {timeout}s")


def run_cli(env: dict[str, str], *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    """`payworker ARGS` with a worker's environment, as an operator runs it."""
    return subprocess.run([PAYWORKER, *args], cwd=ROOT, env={**env, **extra, "COLUMNS": "250"},
                          capture_output=True, text=True, timeout=60)


def sender(upstream: Any, queue: str) -> Callable[..., None]:
    def send(message_type: str, **kwargs: Any) -> None:
        upstream.send_task(f"payments.{message_type}", kwargs=kwargs, queue=queue)
    return send


def registered_user(send: Callable[..., None], wait_for: Any, ids: Any) -> tuple[str, str]:
    """A user with a Stripe customer; returns (user_id, customer_id)."""
    user, reg = ids("user"), ids("reg")
    send("user_registered", event_id=reg, user_id=user, email="duty@example.com")
    row = wait_for(reg)[reg]
    assert row["status"] == "succeeded", row
    return user, row["result"]["customer_id"]


def with_card(send: Callable[..., None], wait_for: Any, stripe_fake: FakeStripe, ids: Any,
              user: str) -> str:
    tok = ids("tok")
    send("card_token_received", event_id=tok, user_id=user,
         token=stripe_fake.create_card_token())
    row = wait_for(tok)[tok]
    assert row["status"] == "succeeded", row
    return tok


def received_tasks(log: str) -> list[str]:
    """The task names of every delivery a worker logged ("Task NAME[id] received")."""
    return [line.split("Task ", 1)[1].split("[", 1)[0]
            for line in log.splitlines() if "Task " in line and "] received" in line]


@pytest.mark.parametrize("command", ["celery", "payworker"])
def test_a_plain_worker_retries_a_charge_whose_first_stripe_call_fails(
    command: str, start_worker: Callable[..., WorkerProcess], upstream: Any,
    wait_for: Any, stripe_fake: FakeStripe, engine: Engine, ids: Any,
) -> None:
    # Given one plain worker, `celery -A worker worker -Q …` or `payworker worker`: no --beat
    worker = start_worker(concurrency=2, command=command)
    send = sender(upstream, worker.queue)
    user, customer = registered_user(send, wait_for, ids)
    with_card(send, wait_for, stripe_fake, ids, user)
    # and Stripe failing the first charge request with a 500
    stripe_fake.inject(method="POST", path=CHARGES, status=500, when="before", times=1)
    chg = ids("chg")
    # When a charge is requested
    send("charge_requested", event_id=chg, user_id=user, amount=1200, currency="usd")
    row = wait_for(chg, timeout=30)[chg]
    # Then the worker's own sweep publishes the retry, and the charge succeeds once
    assert row["status"] == "succeeded", row
    assert row["transient_failures"] == 1 and row["redrives"] >= 1 and row["attempts"] >= 2, row
    charges = [c for c in stripe_fake.list_charges(customer)
               if c["metadata"].get("event_id") == chg]
    assert [c["id"] for c in charges] == [row["result"]["charge_id"]]
    # as a delivery of the event's own task, which Flower shows: no payworker.* task at all
    tasks = received_tasks(worker.log())
    assert tasks.count("payments.charge_requested") >= 2, tasks
    assert not [t for t in tasks if t.startswith("payworker.")], tasks
    # and this worker leads its queue's duties, as recorded for operators
    sweep = duty_row(engine, worker.queue)
    assert sweep is not None and leader_pid(sweep) == worker.proc.pid, sweep
    assert sweep["last_run_at"] is not None and sweep["period_seconds"] == 0.5, sweep


def test_status_shows_the_leader_and_last_sweep_and_warns_when_the_sweep_is_stale(
    start_worker: Callable[..., WorkerProcess], engine: Engine,
) -> None:
    # Given a worker that has swept its queue
    worker = start_worker(concurrency=1)
    queue = worker.queue
    wait_until(lambda: (r := duty_row(engine, queue)) and r["last_run_at"], what="a sweep")
    # When an operator asks for the status
    shown = run_cli(worker.env, "status")
    as_json = run_cli(worker.env, "status", "--json")
    # Then it names the leader and says when it last swept, without a warning
    assert shown.returncode == 0, shown.stderr
    identity = duty_row(engine, queue)["leader"]  # type: ignore[index]
    assert identity.endswith(f":{worker.proc.pid}")
    line = next(x for x in shown.stdout.splitlines() if x.startswith(f"sweep of queue {queue}"))
    assert f"leader {identity} for " in line and "; last run " in line and " ago" in line, line
    assert "WARNING" not in shown.stdout, shown.stdout
    report = json.loads(as_json.stdout)
    assert report["warnings"] == []
    duties = {d["name"]: d for d in report["duties"]}
    assert set(duties) == {"sweep", "token_expiry"}
    sweep = duties["sweep"]
    assert sweep["leader"] == identity and sweep["lock_held"] is True
    assert sweep["stale"] is False and sweep["last_run_age_seconds"] < sweep["stale_after_seconds"]
    assert sweep["stale_after_seconds"] == 3 * 0.5 + 20  # 3 sweep periods + the lease

    # When the worker is gone and no sweep has run for ten minutes
    worker.stop()
    with engine.begin() as conn:
        conn.execute(text("UPDATE payworker_duties SET last_run_at = now() - interval"
                          " '10 minutes' WHERE queue = :q"), {"q": queue})
    shown = run_cli(worker.env, "status")
    as_json = run_cli(worker.env, "status", "--json")
    # Then the status warns, clearly and in the JSON
    assert shown.returncode == 0, shown.stderr
    assert f"WARNING: no sweep run on queue {queue} for 10m" in shown.stdout, shown.stdout
    assert "retries and re-drives are not being published" in shown.stdout
    assert "no worker holds the lead" in shown.stdout
    report = json.loads(as_json.stdout)
    duties = {d["name"]: d for d in report["duties"]}
    assert duties["sweep"]["stale"] is True and duties["sweep"]["lock_held"] is False
    assert duties["sweep"]["leader"] is None  # it left cleanly
    assert any(f"no sweep run on queue {queue}" in w for w in report["warnings"])

    # And for a queue no worker ever ran on, it says that no sweep was ever recorded
    never = f"payments_never_{uuid.uuid4().hex[:8]}"
    shown = run_cli(worker.env, "status", PAYWORKER_QUEUE=never)
    assert f"WARNING: no sweep recorded for queue {never}" in shown.stdout, shown.stdout


def test_card_tokens_kept_past_their_ttl_are_erased_and_then_cannot_be_replayed(
    start_worker: Callable[..., WorkerProcess], upstream: Any, wait_for: Any,
    stripe_fake: FakeStripe, engine: Engine, ids: Any,
) -> None:
    # Given a worker that gives up after 2 transient failures, a user with a card that
    # succeeded (its token erased when it finished), and two card events that died while
    # Stripe failed every attach: dead card events keep their token sealed for a replay
    worker = start_worker(concurrency=2, PAYWORKER_MAX_ATTEMPTS="2")
    queue = worker.queue
    send = sender(upstream, queue)
    user, _ = registered_user(send, wait_for, ids)
    finished = with_card(send, wait_for, stripe_fake, ids, user)
    stripe_fake.inject(method="POST", path=ATTACH, status=500, name="attach-down")
    old, recent = ids("tok-old"), ids("tok-recent")
    for event_id in (old, recent):
        send("card_token_received", event_id=event_id, user_id=user,
             token=stripe_fake.create_card_token("5555555555554444"))
    rows = wait_for(old, recent, timeout=30)
    stripe_fake.clear_faults()
    assert {r["status"] for r in rows.values()} == {"dead"}, rows
    assert all(r["sealed_token"] and r["recovery_point"] == "card_attaching"
               for r in rows.values()), rows
    # and one of them first received 73 hours ago (the TTL is 72), and a finished event
    # that still holds a token (as rows of an older version may)
    with engine.begin() as conn:
        conn.execute(text("UPDATE payment_events SET created_at = now() - interval '73 hours'"
                          " WHERE event_id = :e"), {"e": old})
        conn.execute(text("UPDATE payment_events SET sealed_token = 'left-behind'"
                          " WHERE event_id = :e"), {"e": finished})

    # When a worker takes the lead of the queue (it runs every duty at once)
    worker.stop()
    successor = start_worker(concurrency=1, queue=queue)
    wait_until(lambda: leader_pid(duty_row(engine, queue, "token_expiry")) == successor.proc.pid
               and (r := duty_row(engine, queue, "token_expiry")) and r["last_result"]
               and r["last_run_at"] > r["leader_since"], what="a token expiry run")

    # Then the old dead event's token and the finished event's are erased, the recent one kept
    rows = event_rows(engine, [old, recent, finished])
    assert rows[old]["sealed_token"] is None and rows[finished]["sealed_token"] is None
    assert rows[recent]["sealed_token"] is not None
    assert rows[old]["status"] == "dead"  # nothing else changed
    assert duty_row(engine, queue, "token_expiry")["last_result"] == {"erased": 2}  # type: ignore[index]
    # and a replay of the old event is refused: the token it needs to resume is gone
    refused = run_cli(successor.env, "replay", old)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert f"refused {old}: the card token needed to resume at card_attaching is gone" in (
        " ".join(refused.stdout.split()))


def test_tasks_queued_by_an_older_version_still_work(
    start_worker: Callable[..., WorkerProcess], upstream: Any, wait_for: Any, engine: Engine,
    ids: Any,
) -> None:
    # Given an event re-opened and not due yet (the sweep leaves it alone)
    worker = start_worker(concurrency=1)
    user, reg = ids("user"), ids("reg")
    sender(upstream, worker.queue)("user_registered", event_id=reg, user_id=user,
                                   email="old@example.com")
    assert wait_for(reg)[reg]["status"] == "succeeded"
    with engine.begin() as conn:
        conn.execute(text(
            "UPDATE payment_events SET status = 'processing', completed_at = NULL,"
            " recovery_point = 'started', next_attempt_at = now() + interval '1 hour'"
            " WHERE event_id = :e"), {"e": reg})
    # When the messages an older version published arrive: a re-drive and a sweep
    upstream.send_task("payworker.redrive", kwargs={"event_id": reg}, queue=worker.queue)
    upstream.send_task("payworker.sweep", queue=worker.queue)
    # Then the re-drive resumes the event (the customer found, not created again)
    row = wait_for(reg, timeout=30)[reg]
    assert row["status"] == "succeeded" and row["result"]["existing"] is True, row
    # and the sweep ran as one pass
    wait_until(lambda: any("payworker.sweep[" in line and "succeeded" in line
                           for line in worker.log().splitlines()), what="the old sweep task")
