"""Fixtures of the chaos suite; the machinery is in tests/chaos/harness/. A test that asks
for `chaos_broker` runs on Redis and on RabbitMQ in one pytest run, whatever TEST_BROKER
says, with killable workers (`chaos_workers`) and a publisher (`chaos_publisher`) on a
queue of its own, the session's database and the session's Stripe fake."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from stripe_fake import FakeStripe
from tests.chaos.harness.broker import Broker, Publisher
from tests.chaos.harness.workers import WorkerPool
from tests.conftest import broker_url_for


@pytest.fixture(params=["redis", "rabbitmq"])
def chaos_broker(request: pytest.FixtureRequest) -> Broker:
    """Both brokers, in every run: each test using this runs once per broker. A broker
    that is down skips locally and fails under CI=true."""
    return Broker(request.param, broker_url_for(request.param))


@pytest.fixture
def chaos_workers(
    database_url: str, chaos_broker: Broker, stripe_fake: FakeStripe, tmp_path: Path
) -> Iterator[WorkerPool]:
    """Killable workers with the chaos settings on the test's broker; every one stopped
    (its group killed) and the queue deleted at the end."""
    pool = WorkerPool(database_url, chaos_broker.url, stripe_fake.url, tmp_path)
    yield pool
    pool.stop_all()


@pytest.fixture
def chaos_publisher(chaos_broker: Broker, chaos_workers: WorkerPool) -> Iterator[Publisher]:
    """A plain upstream Celery app publishing to the test's queue."""
    publisher = Publisher(chaos_broker.url, chaos_workers.queue)
    yield publisher
    publisher.close()
