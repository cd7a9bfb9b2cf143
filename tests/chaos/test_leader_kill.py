"""Every worker sweeps, one at a time: SIGKILL the whole process group of the worker that
leads the queue's periodic duties, and another worker takes the lead over and re-drives an
event due for retry within the lease plus a sweep interval. No beat process anywhere.

Runs on Redis and on RabbitMQ in the same pytest invocation, whatever TEST_BROKER says.
Figures are printed (`pytest -s tests/chaos/test_leader_kill.py`)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine

from stripe_fake import FakeStripe
from tests.chaos.harness.broker import Broker, Publisher
from tests.chaos.harness.watch import figures, poll
from tests.chaos.harness.workers import LEASE_SECONDS, SWEEP_SECONDS, WorkerPool
from tests.chaos.harness.world import charges_of_event
from tests.conftest import duty_row, leader_pid

pytestmark = pytest.mark.usefixtures("no_faults")

# A charge is a PaymentIntent create (the default API), or a Charges API call.
CHARGES = "^/v1/(payment_intents|charges)$"
# Beyond lease + sweep: the charge's first run, its retry's backoff and the re-driven run,
# on a machine that may be busy.
SLACK_SECONDS = 5.0
TAKEOVER_BOUND = LEASE_SECONDS + SWEEP_SECONDS
RECOVERY_BOUND = LEASE_SECONDS + SWEEP_SECONDS + SLACK_SECONDS


def _uid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:10]}"


@pytest.mark.chaos
def test_sigkill_of_the_leader_hands_the_sweep_to_another_worker(
    chaos_broker: Broker, chaos_workers: WorkerPool, chaos_publisher: Publisher,
    stripe_fake: FakeStripe, engine: Engine, wait_for: Callable[..., Any],
) -> None:
    # Given two plain workers on one queue, one of which leads its duties and has swept
    first, second = chaos_workers.start(wait=False), chaos_workers.start(wait=False)
    first.wait_ready(), second.wait_ready()
    queue = chaos_workers.queue
    by_pid = {first.proc.pid: first, second.proc.pid: second}
    before = poll(lambda: (r := duty_row(engine, queue)) and r["last_run_at"]
                  and leader_pid(r) in by_pid and r, timeout=20, what="a leader's first sweep")
    leader = by_pid[leader_pid(before)]  # type: ignore[index]
    survivor = second if leader is first else first
    # and a user with a card
    user, reg, tok = _uid("user"), _uid("reg"), _uid("tok")
    chaos_publisher.send("user_registered", event_id=reg, user_id=user, email="l@example.com")
    chaos_publisher.send("card_token_received", event_id=tok, user_id=user,
                         token=stripe_fake.create_card_token())
    rows = wait_for(reg, tok, timeout=30)
    assert {r["status"] for r in rows.values()} == {"succeeded"}, rows
    customer = rows[reg]["result"]["customer_id"]

    # When the leader's whole process group is SIGKILLed
    killed_wall = datetime.now(UTC)
    killed_at = time.monotonic()
    victims = leader.kill()
    # and a charge then fails its first Stripe call: its retry is due in the ledger, and
    # only a sweep publishes it
    stripe_fake.inject(method="POST", path=CHARGES, status=500, when="before", times=1)
    chg = _uid("chg")
    chaos_publisher.send("charge_requested", event_id=chg, user_id=user, amount=1500,
                         currency="usd")
    after = poll(lambda: (r := duty_row(engine, queue)) and leader_pid(r) == survivor.proc.pid
                 and r["last_run_at"] and r["last_run_at"] > r["leader_since"] and r,
                 timeout=TAKEOVER_BOUND + 10, what="the survivor's lead and first sweep",
                 step=0.05)
    row = wait_for(chg, timeout=RECOVERY_BOUND + 20)[chg]
    recovery = time.monotonic() - killed_at
    takeover = (after["leader_since"] - killed_wall).total_seconds()

    # Then the other worker leads within a sweep interval (the lock went with the killed
    # session), and the charge is retried by its sweep, once, within lease + sweep interval
    charges = charges_of_event(stripe_fake, customer, chg)
    figures(
        f"leader SIGKILL [{chaos_broker.name}]", processes_killed=len(victims),
        takeover_s=round(takeover, 2), recovery_s=round(recovery, 2),
        takeover_bound_s=TAKEOVER_BOUND, recovery_bound_s=RECOVERY_BOUND,
        attempts=row["attempts"], redrives=row["redrives"], stripe_charges=len(charges),
    )
    assert leader.proc.pid in victims
    assert after["leader"] != before["leader"] and after["leader_since"] > killed_wall
    assert 0 <= takeover <= TAKEOVER_BOUND, f"took the lead {takeover:.2f}s after the kill"
    assert row["status"] == "succeeded", row
    assert row["transient_failures"] == 1 and row["redrives"] >= 1, row
    assert [c["id"] for c in charges] == [row["result"]["charge_id"]]
    assert recovery <= RECOVERY_BOUND, f"re-driven {recovery:.1f}s after the kill"
    assert survivor.alive()
