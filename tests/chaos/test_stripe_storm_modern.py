"""Chaos 5 on the modern path: a fault storm (the four faults of harness/storm.py, 30%
of all Stripe requests) over a mixed batch of old and new messages, each delivered twice:

- a queue whose workers charge through the Charges API (PAYWORKER_CHARGE_API=charges):
  new users with token cards (duplicates, declines) and their charges;
- a queue whose workers charge through PaymentIntents (the default): new users with
  PaymentMethod cards (some also send a token of the same card: one card), users with a
  token card only (charged through a PaymentIntent), declines, two users whose card needs
  3-D Secure (their charges end `action_required`), and users with two PaymentMethods who
  switch the default, remove (detach) the first and charge the second;
- then, once the charges settled, refunds on both queues: full, partial then the rest at
  once, more than the charge holds (`refund_exceeds_charge`), of a declined charge
  (`charge_not_refundable`);
- then, still in the storm, one customer authenticates: that charge ends `succeeded`
  through the watch, once.

Every event must end as expected (final, or action_required where the customer never
came), and Stripe and Postgres must agree object by object: one customer, card,
PaymentIntent, charge and refund per message, amounts refunded equal on both sides.

Workers: one per queue, concurrency 8, PAYWORKER_STRIPE_TIMEOUT=1, lease 6 s, sweep 1 s,
PAYWORKER_ACTION_POLL_SECONDS=1, PAYWORKER_MAX_ATTEMPTS=30 (the chaos settings).
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine

from stripe_fake import FakeStripe
from tests.chaos.harness.batches import Batch
from tests.chaos.harness.batches_modern import (
    Mixed,
    mixed_modern_batch,
    refund_batch,
    setup_modern,
    two_card_users,
)
from tests.chaos.harness.broker import Publisher
from tests.chaos.harness.storm import FAULT_NAMES, fired, unleash
from tests.chaos.harness.watch import (
    explain,
    figures,
    poll,
    status_counts,
    unfinished,
    unsettled,
    wait_final,
    wait_settled,
)
from tests.chaos.harness.workers import WorkerPool
from tests.chaos.harness.world import check_world, pg_charge
from tests.conftest import fresh_database

pytestmark = pytest.mark.chaos

LEGACY_USERS = 20  # 20 registrations, 23 cards, 40 Charges API charges
MODERN_USERS = 24  # 24 registrations, 29 cards, 48 PaymentIntent charges
PREPARED_USERS = 10  # 10 default switches, 10 removals, 20 PaymentIntent charges
COPIES = 2
FAULT_RATE = 0.30
STRIPE_TIMEOUT = 1.0
SETUP_TIMEOUT = 60.0
FINISH_TIMEOUT = 150.0


@dataclass
class Lane:
    """One queue: its workers and its publisher."""

    pool: WorkerPool
    publisher: Publisher

    def send(self, batch: Batch, copies: int, seed: int) -> int:
        messages = batch.messages * copies
        random.Random(seed).shuffle(messages)
        return self.publisher.send_all(messages)


@dataclass
class Storm:
    engine: Engine
    fake: FakeStripe
    legacy: Lane  # PAYWORKER_CHARGE_API=charges
    modern: Lane  # PaymentIntents

    def logs(self) -> str:
        return self.legacy.pool.logs() + "\n" + self.modern.pool.logs()


@pytest.fixture(scope="module")
def storm(broker_url: str, tmp_path_factory: Any) -> Iterator[Storm]:
    fake = FakeStripe.start()
    with fresh_database("payworker_chaos_storm_modern") as url:
        engine = create_engine(url)
        log_dir: Path = tmp_path_factory.mktemp("chaos-storm-modern")
        settings = {"PAYWORKER_STRIPE_TIMEOUT": str(STRIPE_TIMEOUT),
                    "PAYWORKER_ACTION_POLL_SECONDS": "1"}
        lanes = [WorkerPool(url, broker_url, fake.url, log_dir, PAYWORKER_CHARGE_API=api,
                            **settings) for api in ("charges", "payment_intents")]
        publishers = [Publisher(broker_url, pool.queue) for pool in lanes]
        try:
            workers = [pool.start(concurrency=8, wait=False) for pool in lanes]
            for worker in workers:
                worker.wait_ready()
            yield Storm(engine, fake, Lane(lanes[0], publishers[0]),
                        Lane(lanes[1], publishers[1]))
        finally:
            for pool, publisher in zip(lanes, publishers, strict=True):
                pool.stop_all()
                publisher.close()
            engine.dispose()
            fake.stop()


def _settle(storm: Storm, batches: list[Batch], timeout: float) -> dict[str, dict[str, Any]]:
    ids = [e for b in batches for e in b.event_ids]
    rows = wait_settled(storm.engine, ids, timeout)
    lost = unsettled(rows, ids)
    wrong = {k: v for b in batches for k, v in b.wrong_outcomes(rows).items()}
    if lost or wrong:
        print(explain(storm.engine, lost + list(wrong), storm.logs()))
    assert not lost, f"{len(lost)} events unsettled: {lost[:10]}"
    assert not wrong, f"{len(wrong)} wrong outcomes: {list(wrong.items())[:5]}"
    return rows


def _customer_authenticates(storm: Storm, event: str) -> None:
    """The customer back in the app: confirm the waiting PaymentIntent on-session with
    the card the event's result names, then pass 3-D Secure."""
    row = pg_charge(storm.engine, event)
    assert row is not None and row["status"] == "requires_action", row
    pi = row["payment_intent_id"]
    storm.fake.confirm_payment_intent_on_session(pi, row["stripe_card_id"])
    storm.fake.authenticate_payment_intent(pi)


def test_stripe_storm_on_old_and_new_messages(storm: Storm) -> None:
    # Given users with two PaymentMethod cards each, made before the storm
    tag = f"sm-{uuid.uuid4().hex[:6]}"
    setup = setup_modern(f"{tag}-p", PREPARED_USERS, storm.fake)
    storm.modern.send(setup, copies=1, seed=1)
    rows = wait_final(storm.engine, setup.event_ids, SETUP_TIMEOUT)
    assert not unfinished(rows, setup.event_ids) and not setup.wrong_outcomes(rows)
    prepared = two_card_users(storm.engine, setup.user_ids)
    mixed: Mixed = mixed_modern_batch(tag, storm.fake, prepared, LEGACY_USERS, MODERN_USERS,
                                      seed=7)
    users = mixed.user_ids | setup.user_ids

    # When a storm of Stripe faults blows while both queues get each message twice
    storm.fake.clear_faults()
    storm.fake.clear_requests()
    unleash(storm.fake, FAULT_RATE)
    started = time.monotonic()
    sent = storm.legacy.send(mixed.legacy, COPIES, seed=8)
    sent += storm.modern.send(mixed.modern, COPIES, seed=9)
    rows = _settle(storm, [mixed.legacy, mixed.modern], FINISH_TIMEOUT)

    # ... and, once the charges settled, the refunds come (twice each), still in the storm
    legacy_refunds = refund_batch(mixed.legacy, rows, seed=10)
    modern_refunds = refund_batch(mixed.modern, rows, seed=11)
    sent += storm.legacy.send(legacy_refunds, COPIES, seed=12)
    sent += storm.modern.send(modern_refunds, COPIES, seed=13)
    rows |= _settle(storm, [legacy_refunds, modern_refunds], FINISH_TIMEOUT)

    # ... and one customer authenticates, still in the storm
    paid_later, waiting = mixed.awaiting_customer[0], mixed.awaiting_customer[1:]
    _customer_authenticates(storm, paid_later)
    poll(lambda: status_counts(storm.engine, [paid_later]).get("succeeded"), 60,
         "the watch to see the authenticated payment")
    elapsed = time.monotonic() - started
    faults = fired(storm.fake)
    storm.fake.clear_faults()
    requests = len(storm.fake.requests())

    # Then every event ended as expected, and Stripe and Postgres agree object by object
    batches = [mixed.legacy, mixed.modern, legacy_refunds, modern_refunds]
    ids = [e for b in batches for e in b.event_ids]
    world = check_world(storm.engine, storm.fake, users)
    counts = status_counts(storm.engine, ids)
    figures(
        "stripe storm, old and new messages", events=len(ids), deliveries=sent,
        stripe_requests=requests, faults_fired=sum(faults.values()),
        fault_rate=f"{sum(faults.values()) / max(1, requests):.2f}", faults=faults,
        duplicates_found=len(world.duplicates), mismatches_found=len(world.mismatches),
        outcomes=dict(counts), stripe_customers=world.stripe_customers,
        stripe_cards=world.stripe_cards, stripe_payment_methods=world.stripe_payment_methods,
        stripe_charges=world.stripe_charges, stripe_payment_intents=world.stripe_payment_intents,
        stripe_refunds=world.stripe_refunds, seconds=f"{elapsed:.1f}",
    )
    assert world.ok, world.summary()
    assert status_counts(storm.engine, waiting) == {"action_required": len(waiting)}
    modern_charges = mixed.modern.types()["charge_requested"]
    assert world.stripe_payment_intents == modern_charges
    assert world.stripe_customers == LEGACY_USERS + MODERN_USERS + PREPARED_USERS
    # one card per user: duplicates (either kind) attach nothing, removals detach
    assert world.stripe_cards + world.stripe_payment_methods == len(users)
    refunded = [e for b in (legacy_refunds, modern_refunds) for e in b.event_ids
                if rows[e]["status"] == "succeeded"]
    assert world.stripe_refunds == len(refunded) > 0
    assert counts["failed"] > 0 and counts["action_required"] == len(waiting)
    assert all(faults.get(name, 0) > 0 for name in FAULT_NAMES), faults
