"""Chaos scenario 1 of issue 3: a worker SIGKILLed while a Stripe charge call is in flight.

The Stripe fake creates the charge, then holds the response back for a few seconds; the
worker is killed in that window, so Stripe has the charge and Postgres does not know it.
Whatever comes next (a new worker, or the surviving main process) must finish the event
with exactly one charge on Stripe, within the lease plus a sweep interval (plus a few
seconds of slack for the re-driven run; a new worker that takes longer than the lease to
start moves the bound by that much). Runs on Redis and on RabbitMQ in the same pytest
invocation, whatever TEST_BROKER says.

Also here: the start-up check that keeps a worker from running with a visibility timeout
that would let Redis deliver a running message twice.

Figures are printed (`pytest -s tests/chaos/test_worker_kill.py`)."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import pytest
from sqlalchemy import Engine

from stripe_fake import FakeStripe
from tests.chaos.harness.broker import Broker, Publisher
from tests.chaos.harness.watch import event_row, figures
from tests.chaos.harness.workers import (
    LEASE_SECONDS,
    SWEEP_SECONDS,
    KillableWorker,
    WorkerPool,
)
from tests.chaos.harness.world import charges_of_event, pg_charge, posts_with_key
from tests.conftest import ROOT, broker_url_for, drop_queue, worker_env

pytestmark = pytest.mark.usefixtures("no_faults")

CHARGES = "^/v1/charges$"
# How long the fake holds back the answer of a charge it has already created.
IN_FLIGHT_DELAY = 3.0
# Longer than IN_FLIGHT_DELAY: the call is in flight when it is killed, it does not time out
# by itself (the worker caps it below the soft time limit). The charges are Charges API
# calls (test_recovery_points_modern.py kills PaymentIntent creates, the default API).
IN_FLIGHT_SETTINGS = {"PAYWORKER_STRIPE_TIMEOUT": "10", "PAYWORKER_CHARGE_API": "charges"}
# Beyond lease + sweep: the sweep's publish and the re-driven run itself (claim, the
# replayed Stripe call, the commit), on a machine that may be busy.
SLACK_SECONDS = 5.0
RECOVERY_BOUND = LEASE_SECONDS + SWEEP_SECONDS + SLACK_SECONDS


def _pool(worker: KillableWorker) -> str:
    """The pool the worker runs, from its banner (".> concurrency: 3 (prefork)")."""
    found = re.search(r"concurrency: (\d+ \(\w+\))", worker.log())
    return found.group(1).replace(" ", "") if found else "?"


def _uid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:10]}"


def _customer_with_card(
    publisher: Publisher, stripe: FakeStripe, wait_for: Callable[..., Any]
) -> tuple[str, str]:
    """A registered user with a default card; returns (user_id, stripe customer id)."""
    user, reg, tok = _uid("user"), _uid("reg"), _uid("tok")
    publisher.send("user_registered", event_id=reg, user_id=user, email="kill@example.com")
    publisher.send("card_token_received", event_id=tok, user_id=user,
                   token=stripe.create_card_token())
    rows = wait_for(reg, tok, timeout=30)
    assert {r["status"] for r in rows.values()} == {"succeeded"}, rows
    return user, rows[reg]["result"]["customer_id"]


def _wait_in_flight(stripe: FakeStripe, pending: dict[str, str], timeout: float = 20) -> None:
    """Wait until Stripe has created the charge of every event (customer by event id):
    their responses are now being held back by the fake."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(charges_of_event(stripe, customer, event) for event, customer in pending.items()):
            return
        time.sleep(0.05)
    raise AssertionError(f"the charges did not reach Stripe within {timeout}s")


def _audit(
    stripe: FakeStripe, engine: Engine, events: dict[str, str]
) -> tuple[int, int, dict[str, int], list[str]]:
    """Compare Stripe and Postgres for `events` (customer by event id): the duplicates
    (charges beyond one per event), the lost events (not succeeded), the charge POSTs per
    event, and every disagreement found. Each event must have succeeded with exactly one
    Stripe charge, the one its ledger row and its `charges` row name."""
    duplicates = lost = 0
    posts: dict[str, int] = {}
    problems: list[str] = []
    for event_id, customer in events.items():
        on_stripe = charges_of_event(stripe, customer, event_id)
        row = event_row(engine, event_id)
        assert row is not None, f"{event_id}: no ledger row"
        pg = pg_charge(engine, event_id)
        duplicates += max(0, len(on_stripe) - 1)
        lost += row["status"] != "succeeded"
        posts[event_id] = len(posts_with_key(stripe, "/v1/charges", f"pw:{event_id}:charge"))
        if row["status"] != "succeeded" or len(on_stripe) != 1:
            problems.append(f"{event_id}: {row['status']}, {len(on_stripe)} Stripe charges")
        elif pg is None or pg["status"] != "succeeded" or not (
            pg["stripe_charge_id"] == on_stripe[0]["id"] == (row["result"] or {}).get("charge_id")
        ):
            problems.append(f"{event_id}: charges row {pg} disagrees with Stripe {on_stripe}")
    return duplicates, lost, posts, problems


@pytest.mark.chaos
@pytest.mark.parametrize("pool", ["default", "prefork"])
def test_sigkill_of_the_whole_worker_while_charges_are_in_flight(
    pool: str, chaos_broker: Broker, chaos_workers: WorkerPool, chaos_publisher: Publisher,
    stripe_fake: FakeStripe, engine: Engine, wait_for: Callable[..., Any],
) -> None:
    """SIGKILL the worker's whole process group (main process, pool processes) while
    Stripe holds back the answers of three charges it has made; a new worker on the same
    queue finishes each event with one charge, within lease + sweep interval (+ slack) of
    the kill, or of the new worker's start if that took longer than the lease. With the
    product's default pool and with prefork."""
    stripe, in_flight = stripe_fake, 3
    settings = IN_FLIGHT_SETTINGS | ({} if pool == "default" else {"PAYWORKER_POOL": pool})
    first = chaos_workers.start(concurrency=in_flight, **settings)
    customers = [_customer_with_card(chaos_publisher, stripe, wait_for)
                 for _ in range(in_flight)]
    stripe.inject(method="POST", path=CHARGES, delay=IN_FLIGHT_DELAY, when="after",
                  times=in_flight, name="held-back")
    events: dict[str, str] = {}
    for user, customer in customers:
        event_id = _uid("kill-charge")
        events[event_id] = customer
        chaos_publisher.send("charge_requested", event_id=event_id, user_id=user,
                             amount=1999, currency="usd")
    _wait_in_flight(stripe, events)
    held = [event_row(engine, e) for e in events]
    assert all(r is not None and r["status"] == "processing"
               and r["recovery_point"] == "charge_creating" for r in held), held

    killed_at = time.monotonic()
    victims = first.kill()
    assert first.proc.pid in victims  # the main process (and pool children)
    if pool == "prefork":
        assert "(prefork)" in first.log() and len(victims) >= 1 + in_flight, victims
    second = chaos_workers.start(concurrency=2, **settings)  # on the same queue
    # The lease runs out while the new worker starts; on a busy machine the start may take
    # longer than the lease, and nothing can re-drive before a worker is up.
    started_in = time.monotonic() - killed_at
    bound = max(LEASE_SECONDS, started_in) + SWEEP_SECONDS + SLACK_SECONDS
    rows = wait_for(*events, timeout=bound + 20)
    recovery = time.monotonic() - killed_at

    duplicates, lost, posts, problems = _audit(stripe, engine, events)
    figures(
        f"whole worker SIGKILL mid-charge [{chaos_broker.name}]",
        pool=_pool(first), events=len(events), kills=1, processes_killed=len(victims),
        duplicates=duplicates, lost=lost, recovery_s=round(recovery, 1),
        new_worker_ready_s=round(started_in, 1), bound_s=round(bound, 1),
        charge_posts=sorted(posts.values()), attempts=sorted(r["attempts"] for r in rows.values()),
    )
    assert not problems, problems
    # The first POST's answer was lost with the worker; the resumed run repeated it with
    # the same idempotency key and Stripe replayed the charge.
    assert all(n >= 2 for n in posts.values()), posts
    assert recovery <= bound, f"recovered in {recovery:.1f}s > {bound:.1f}s"
    assert second.alive()


@pytest.mark.chaos
def test_sigkill_of_a_pool_process_while_a_charge_is_in_flight(
    chaos_broker: Broker, chaos_workers: WorkerPool, chaos_publisher: Publisher,
    stripe_fake: FakeStripe, engine: Engine, wait_for: Callable[..., Any],
) -> None:
    """SIGKILL only the prefork child running the charge: task_reject_on_worker_lost gives
    the message back to the broker (it is delivered again at once) and the event ends with
    one charge; the main process lives on."""
    stripe = stripe_fake
    # Pool processes exist with prefork only (the product's default pool may be threads).
    worker = chaos_workers.start(concurrency=2, PAYWORKER_POOL="prefork", **IN_FLIGHT_SETTINGS)
    assert "(prefork)" in worker.log()
    user, customer = _customer_with_card(chaos_publisher, stripe, wait_for)
    stripe.inject(method="POST", path=CHARGES, delay=IN_FLIGHT_DELAY, when="after",
                  times=1, name="held-back")
    event_id = _uid("child-kill")
    task_id = chaos_publisher.send("charge_requested", event_id=event_id, user_id=user,
                                   amount=2500, currency="eur")
    _wait_in_flight(stripe, {event_id: customer})

    holder = event_row(engine, event_id)
    assert holder is not None and holder["status"] == "processing", holder
    pid = int(holder["locked_by"].split(":")[1])  # locked_by = host:pid:task_id
    assert pid != worker.proc.pid
    killed_at = time.monotonic()
    worker.kill_child(pid)
    rows = wait_for(event_id, timeout=RECOVERY_BOUND + 20)
    recovery = time.monotonic() - killed_at

    duplicates, lost, posts, problems = _audit(stripe, engine, {event_id: customer})
    deliveries = sum(f"[{task_id}] received" in line for line in worker.log().splitlines())
    figures(
        f"pool process SIGKILL mid-charge [{chaos_broker.name}]",
        pool=_pool(worker), events=1, kills=1, deliveries=deliveries, duplicates=duplicates,
        lost=lost, recovery_s=round(recovery, 1), bound_s=RECOVERY_BOUND,
        charge_posts=posts[event_id], attempts=rows[event_id]["attempts"],
    )
    assert not problems, problems
    assert worker.alive(), "the main process must survive the loss of a pool process"
    assert "WorkerLostError" in worker.log()
    # reject_on_worker_lost: the killed child's message came back instead of being acked.
    assert deliveries >= 2, f"message delivered {deliveries} time(s)"
    assert posts[event_id] >= 2, posts
    assert recovery <= RECOVERY_BOUND, f"recovered in {recovery:.1f}s > {RECOVERY_BOUND}s"


# ---- start-up safety -------------------------------------------------------------------


WORKER_COMMANDS = {
    "celery": [sys.executable, "-m", "celery", "-A", "worker", "worker", "--loglevel", "INFO",
               "--without-mingle", "--without-gossip", "--concurrency", "1"],
    "payworker": [sys.executable, "-m", "worker.cli", "worker", "--without-mingle",
                  "--without-gossip", "--concurrency", "1"],
}


@pytest.mark.any_broker  # the visibility timeout is Redis's: always checked on Redis
@pytest.mark.parametrize("command", sorted(WORKER_COMMANDS))
def test_worker_refuses_a_visibility_timeout_shorter_than_a_task_run(
    command: str, database_url: str, stripe_fake: FakeStripe,
) -> None:
    """PAYWORKER_VISIBILITY_TIMEOUT=30 with PAYWORKER_LEASE_SECONDS=60 (a 60 s time limit)
    would let Redis deliver a running message a second time: the worker must exit with a
    clear message instead of consuming."""
    redis_url = broker_url_for("redis")
    queue = f"payments_refuse_{uuid.uuid4().hex[:8]}"
    env = worker_env(database_url, redis_url, stripe_fake.url, queue,
                     PAYWORKER_VISIBILITY_TIMEOUT="30", PAYWORKER_LEASE_SECONDS="60")
    argv = [*WORKER_COMMANDS[command], "-Q", queue] if command == "celery" \
        else WORKER_COMMANDS[command]
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, started = _output_until_exit_or_ready(proc, timeout=30)
    finally:
        with suppress(ProcessLookupError):  # whatever happened, nothing of it stays up
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        drop_queue(redis_url, queue)
    print(f"[startup] {command}: exit={proc.returncode} started={started}\n{output[-600:]}")
    assert not started, f"the worker started consuming with unsafe settings:\n{output}"
    assert proc.returncode not in (0, None), output
    assert "PAYWORKER_VISIBILITY_TIMEOUT=30" in output, output
    assert "refus" in output.lower(), output


def _output_until_exit_or_ready(
    proc: subprocess.Popen[str], timeout: float
) -> tuple[str, bool]:
    """The worker's output until it exits (False) or says it is ready (True; the worker is
    then stopped). A reader thread keeps the deadline even when the worker is silent."""
    assert proc.stdout is not None
    stream = proc.stdout
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    output: list[str] = []
    started = False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            continue
        if line is None:
            break
        output.append(line)
        if " ready." in line:
            started = True
            break
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    reader.join(timeout=5)
    while not lines.empty():
        output.append(lines.get() or "")
    stream.close()
    return "".join(output), started


def test_worker_accepts_the_short_settings_of_the_issue(
    chaos_broker: Broker, chaos_workers: WorkerPool, chaos_publisher: Publisher,
    engine: Engine, wait_for: Callable[..., Any],
) -> None:
    """PAYWORKER_VISIBILITY_TIMEOUT=60, PAYWORKER_LEASE_SECONDS=6, PAYWORKER_SWEEP_SECONDS=2
    is a valid configuration: the worker starts and processes a message."""
    worker = chaos_workers.start(concurrency=2, PAYWORKER_VISIBILITY_TIMEOUT="60",
                                 PAYWORKER_LEASE_SECONDS="6", PAYWORKER_SWEEP_SECONDS="2")
    assert "refusing to start" not in worker.log()
    event_id, user = _uid("short-settings"), _uid("user")
    chaos_publisher.send("user_registered", event_id=event_id, user_id=user,
                         email="short@example.com")
    rows = wait_for(event_id, timeout=30)
    assert rows[event_id]["status"] == "succeeded", rows
