"""Chaos 5 and 6: a batch of 500 mixed events (every message type, out of order, with
duplicate cards and declines) against a misbehaving Stripe, then delivered three times.

5. About 30% of Stripe requests fail, split evenly between four faults:
   - a 500 before Stripe runs the request (nothing happened);
   - a 429 before Stripe runs it;
   - a response slower than the worker's timeout (PAYWORKER_STRIPE_TIMEOUT=1 s, the fake
     holds the request 1.5 s and then runs it: the outcome is unknown to the worker);
   - a 500 after Stripe ran the request (it happened, the worker does not know).
   Every event must finish with its expected outcome. Stripe must hold exactly one object
   per intent. Postgres (`customers`, `cards`, `charges`, the ledger) must agree with
   Stripe object by object.
6. Another 500 such events, each published three times and shuffled together (1500
   messages), under the same storm: same result, and the copies are absorbed.

Workers: two processes with concurrency 8 each, PAYWORKER_LEASE_SECONDS=6,
PAYWORKER_SWEEP_SECONDS=1, PAYWORKER_VISIBILITY_TIMEOUT=60, no SDK retries (every fault
goes through the ledger), and PAYWORKER_MAX_ATTEMPTS=30, so that a 30% fault rate does
not make events dead.
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
from tests.chaos.harness.batches import Batch, mixed_batch, prepared_users, setup_batch
from tests.chaos.harness.broker import Publisher
from tests.chaos.harness.storm import fired, unleash
from tests.chaos.harness.watch import (
    duplicate_deliveries,
    explain,
    figures,
    status_counts,
    unfinished,
    wait_final,
)
from tests.chaos.harness.workers import WorkerPool
from tests.chaos.harness.world import check_world
from tests.conftest import fresh_database

pytestmark = pytest.mark.chaos

EVENTS = 500
NEW_USERS = 70  # 70 registrations, 80 cards, 154 charges
PREPARED_USERS = 49  # 49 default switches, 49 removals, 98 charges
COPIES = 3
FAULT_RATE = 0.30
STRIPE_TIMEOUT = 1.0
SETUP_TIMEOUT = 60.0
FINISH_TIMEOUT = 150.0


@dataclass
class Storm:
    engine: Engine
    fake: FakeStripe
    pool: WorkerPool
    publisher: Publisher


@pytest.fixture(scope="module")
def storm(broker_url: str, tmp_path_factory: Any) -> Iterator[Storm]:
    fake = FakeStripe.start()
    with fresh_database("payworker_chaos_storm") as url:
        engine = create_engine(url)
        log_dir: Path = tmp_path_factory.mktemp("chaos-storm")
        pool = WorkerPool(url, broker_url, fake.url, log_dir,
                          PAYWORKER_STRIPE_TIMEOUT=str(STRIPE_TIMEOUT))
        publisher = Publisher(broker_url, pool.queue)
        try:
            for _ in range(2):
                pool.start(concurrency=8, wait=False)
            for worker in pool.started:
                worker.wait_ready()
            yield Storm(engine, fake, pool, publisher)
        finally:
            pool.stop_all()
            publisher.close()
            engine.dispose()
            fake.stop()


def prepare(storm: Storm, tag: str) -> list[Any]:
    """Users with two cards each, made by the workers before the storm starts."""
    setup = setup_batch(tag, PREPARED_USERS, storm.fake)
    storm.publisher.send_all(setup.messages)
    rows = wait_final(storm.engine, setup.event_ids, SETUP_TIMEOUT)
    assert not unfinished(rows, setup.event_ids)
    assert not setup.wrong_outcomes(rows)
    return prepared_users(storm.engine, setup.user_ids)


def run_storm(storm: Storm, scenario: str, copies: int, seed: int) -> None:
    tag = f"{scenario[:2]}-{uuid.uuid4().hex[:6]}"
    prepared = prepare(storm, f"{tag}-p")
    batch: Batch = mixed_batch(tag, storm.fake, prepared, NEW_USERS, seed=seed)
    assert len(batch.event_ids) == EVENTS, batch.types()
    messages = batch.messages * copies
    random.Random(seed).shuffle(messages)
    logs_before = duplicate_deliveries(storm.pool.logs())

    storm.fake.clear_faults()
    storm.fake.clear_requests()
    unleash(storm.fake, FAULT_RATE)
    started = time.monotonic()
    storm.publisher.send_all(messages)
    rows = wait_final(storm.engine, batch.event_ids, FINISH_TIMEOUT)
    elapsed = time.monotonic() - started
    faults = fired(storm.fake)
    storm.fake.clear_faults()
    requests = len(storm.fake.requests())

    lost = unfinished(rows, batch.event_ids)
    wrong = batch.wrong_outcomes(rows)
    users = batch.user_ids | {p.user_id for p in prepared}
    world = check_world(storm.engine, storm.fake, users)
    figures(
        scenario, events=EVENTS, deliveries=len(messages), kills=0, restarts=0,
        stripe_requests=requests, faults_fired=sum(faults.values()),
        fault_rate=f"{sum(faults.values()) / max(1, requests):.2f}", faults=faults,
        transient_failures=sum(r["transient_failures"] for r in rows.values()),
        redrives=sum(r["redrives"] for r in rows.values()),
        duplicate_deliveries_ignored=duplicate_deliveries(storm.pool.logs()) - logs_before,
        duplicates_found=len(world.duplicates), mismatches_found=len(world.mismatches),
        lost_events_found=len(lost), wrong_outcomes=len(wrong),
        outcomes=dict(status_counts(storm.engine, batch.event_ids)),
        stripe_customers=world.stripe_customers, stripe_cards=world.stripe_cards,
        stripe_charges=world.stripe_charges, seconds=f"{elapsed:.1f}",
    )
    if lost or wrong or not world.ok:
        print(world.summary())
        print(explain(storm.engine, lost + list(wrong), storm.pool.logs()))
    assert not lost, f"{len(lost)} events unfinished: {lost[:10]}"
    assert not wrong, f"{len(wrong)} wrong outcomes: {list(wrong.items())[:5]}"
    assert world.ok, world.summary()
    types = batch.types()
    assert world.stripe_customers == NEW_USERS + PREPARED_USERS
    # new users keep one card each (the second token of the same card is a duplicate);
    # prepared users keep their second card
    assert world.stripe_cards == NEW_USERS + PREPARED_USERS
    assert world.stripe_charges == types["charge_requested"]
    assert all(faults.get(name, 0) > 0 for name in ("500-before", "429", "timeout",
                                                     "500-after")), faults


def test_stripe_storm_on_500_mixed_events(storm: Storm) -> None:
    run_storm(storm, "stripe storm", copies=1, seed=5)


def test_500_mixed_events_delivered_three_times(storm: Storm) -> None:
    run_storm(storm, "three deliveries each, stripe storm", copies=COPIES, seed=6)
