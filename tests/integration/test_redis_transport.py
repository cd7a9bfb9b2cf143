"""payworker's Redis transport (worker/redis_transport.py) on a real Redis: a message is
always in its queue, in the queue's claimed list or in `unacked`, and one left in the
claimed list (its consumer died between taking and recording it) is put back."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from kombu import Connection, Consumer, Message, Producer

from stripe_fake import FakeStripe
from tests.conftest import (
    WorkerProcess,
    broker_url_for,
    drop_queue,
    event_rows,
    payments_queue,
    upstream_app,
    worker_env,
)
from worker.redis_transport import SEEN_KEY, claimed_key

TRANSPORT = "worker.redis_transport:Transport"


@pytest.fixture
def redis_url() -> str:
    return broker_url_for("redis")


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def queue(redis_url: str, client: redis.Redis) -> Iterator[str]:
    name = f"transport_test_{uuid.uuid4().hex[:8]}"
    yield name
    drop_queue(redis_url, name)
    client.delete(claimed_key(name), SEEN_KEY.format(queue=name))


def ours(url: str) -> Connection:
    """A connection through payworker's transport, as the worker has it."""
    return Connection(url, transport=TRANSPORT, transport_options={"visibility_timeout": 30})


def publish(url: str, queue: str, body: dict[str, Any], **options: Any) -> None:
    """Publish with kombu's own Redis transport, as an upstream app does."""
    with Connection(url) as conn:
        Producer(conn.default_channel).publish(
            body, exchange=payments_queue(url, queue).exchange, routing_key=queue,
            declare=[payments_queue(url, queue)], serializer="json", **options,
        )


def consume_one(url: str, queue: str, on_message: Callable[[Message], None]) -> dict[str, Any]:
    """Take one message through payworker's transport, call `on_message`, ack it."""
    received: list[dict[str, Any]] = []

    def handle(body: dict[str, Any], message: Message) -> None:
        on_message(message)
        received.append(body)
        message.ack()

    with ours(url) as conn, Consumer(conn.default_channel, [payments_queue(url, queue)],
                                     callbacks=[handle]):
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            conn.drain_events(timeout=1)
    assert received, "no message consumed"
    return received[0]


def unacked_tags(client: redis.Redis) -> set[bytes]:
    return set(client.hkeys("unacked"))


def test_a_taken_message_is_recorded_unacked_and_leaves_the_claimed_list_at_once(
    redis_url: str, client: redis.Redis, queue: str
) -> None:
    # Given one message on the queue
    publish(redis_url, queue, {"n": 1})
    seen: dict[str, Any] = {}

    def inspect(message: Message) -> None:
        seen.update(
            queued=client.llen(queue), claimed=client.llen(claimed_key(queue)),
            unacked=message.delivery_tag.encode() in unacked_tags(client),
        )
        seen["tag"] = message.delivery_tag.encode()

    # When a consumer on payworker's transport takes it
    body = consume_one(redis_url, queue, inspect)

    # Then while it is processed it is recorded unacked, and nowhere else
    assert body == {"n": 1}
    assert seen["queued"] == 0 and seen["claimed"] == 0 and seen["unacked"] is True
    # and once acked it is gone
    assert seen["tag"] not in unacked_tags(client)
    assert client.llen(queue) == 0 and client.llen(claimed_key(queue)) == 0


def test_a_message_whose_consumer_died_before_recording_it_is_put_back(
    redis_url: str, client: redis.Redis, queue: str
) -> None:
    # Given a consumer that took a message (the transport's BLMOVE) and died before
    # recording it as unacked
    publish(redis_url, queue, {"n": 2})
    assert client.blmove(queue, claimed_key(queue), 1, "RIGHT", "LEFT") is not None
    assert client.llen(queue) == 0 and client.llen(claimed_key(queue)) == 1

    with ours(redis_url) as conn:
        channel = conn.default_channel
        channel.basic_consume(queue, False, lambda message: None, "test")
        assert channel._atomic_consume()
        # When the restore scan sees it twice, less than the grace period apart
        channel.recover_claimed(grace=60)
        channel.recover_claimed(grace=60)
        # Then it is left alone (a live consumer may be about to record it)
        assert client.llen(claimed_key(queue)) == 1
        # When two scans see it at least the grace period apart
        channel.recover_claimed(grace=0)
        # Then it is back on the queue, and the scan forgot it
        assert client.llen(claimed_key(queue)) == 0 and client.llen(queue) == 1
        assert client.hlen(SEEN_KEY.format(queue=queue)) == 0

    # and it is delivered as any other message
    assert consume_one(redis_url, queue, lambda message: None) == {"n": 2}


def test_a_message_on_a_priority_sub_queue_is_moved_onto_the_queue(
    redis_url: str, client: redis.Redis, queue: str
) -> None:
    # Given a message that a client with kombu's default priority steps published with a
    # priority, so it sits on a priority sub-queue payworker does not read
    publish(redis_url, queue, {"n": 3}, priority=6)
    assert client.llen(queue) == 0

    # When the restore scan runs
    with ours(redis_url) as conn:
        channel = conn.default_channel
        channel.basic_consume(queue, False, lambda message: None, "test")
        assert channel._atomic_consume()
        channel.recover_claimed(grace=30)

    # Then the message is on the queue and is consumed
    assert client.llen(queue) == 1
    assert consume_one(redis_url, queue, lambda message: None) == {"n": 3}


def test_a_payment_message_lost_between_take_and_record_still_completes(
    redis_url: str, client: redis.Redis, database_url: str, stripe_fake: FakeStripe,
    engine: Any, tmp_path: Any,
) -> None:
    # Given a registration message taken off the queue by a consumer that died before it
    # recorded it (exactly the window a Redis restart used to turn into a lost message)
    queue = f"payments_test_{uuid.uuid4().hex[:8]}"
    event_id, user = f"reg-{uuid.uuid4().hex[:8]}", f"user-{uuid.uuid4().hex[:8]}"
    upstream = upstream_app(redis_url)
    upstream.send_task("payments.user_registered", queue=queue,
                       kwargs={"event_id": event_id, "user_id": user, "email": "a@example.com"})
    upstream.close()
    assert client.blmove(queue, claimed_key(queue), 1, "RIGHT", "LEFT") is not None
    env = worker_env(database_url, redis_url, stripe_fake.url, queue,
                     PAYWORKER_VISIBILITY_TIMEOUT="20", PAYWORKER_LEASE_SECONDS="6")
    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
        # When a worker runs on that queue
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            row = event_rows(engine, [event_id]).get(event_id)
            if row and row["status"] == "succeeded":
                break
            time.sleep(0.5)

        # Then the restore scan put the message back and the event succeeded, once
        row = event_rows(engine, [event_id]).get(event_id)
        assert row is not None and row["status"] == "succeeded", row
        assert "put back" in worker.log()
        customer = row["result"]["customer_id"]
        assert stripe_fake.get_customer(customer)["metadata"]["event_id"] == event_id
        assert client.llen(claimed_key(queue)) == 0
    finally:
        worker.stop()
        drop_queue(redis_url, queue)
        client.delete(claimed_key(queue), SEEN_KEY.format(queue=queue))
