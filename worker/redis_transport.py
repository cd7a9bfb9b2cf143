"""kombu's Redis transport with an atomic consume, so a Redis restart cannot lose a message.

kombu takes a message off the queue with BRPOP and only afterwards records it as unacked
(HSET `unacked`). A message popped just before Redis goes down is in neither place once
Redis is back: the pop is in the append-only file, the record is not. The ledger never saw
it, so nothing could bring it back.

Here the message is moved, in one command (BLMOVE), from the queue to a *claimed* list of
that queue, and taken off the claimed list in the same MULTI/EXEC that records it as
unacked. At every instant it is in the queue, in the claimed list or in `unacked`. Whatever
stays in the claimed list longer than the visibility timeout (its consumer died or lost
Redis between the two commands) is put back on the queue by any worker's periodic restore
scan, like a message that stayed unacked too long. A message can therefore come back
twice; the ledger absorbs duplicates.

Needs Redis 6.2 or newer (BLMOVE). Priority sub-queues are not read: every priority is
consumed from the one list of the queue, and messages that another client's settings put
on a priority sub-queue are moved onto it by the same scan.
"""

from __future__ import annotations

import logging
from queue import Empty
from time import monotonic, time
from typing import Any

from kombu.transport import redis, virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads
from redis.exceptions import ConnectionError as RedisConnectionError

from worker import metrics

logger = logging.getLogger(__name__)

# The claimed list of a queue, and the hash of when the scan first saw each entry there.
CLAIMED_KEY = "payworker.claimed:{queue}"
SEEN_KEY = "payworker.claimed_seen:{queue}"
# kombu's default priority steps: where a client with kombu's defaults puts a message
# published with a priority.
FOREIGN_PRIORITIES = (3, 6, 9)
# At most this many strays are moved per scan, so that one scan never blocks Redis long.
MOVE_LIMIT = 1000
MINIMUM_REDIS = (6, 2)

# KEYS: the claimed list, its seen-hash, the queue, then the queue's priority sub-queues.
# ARGV: the grace period in seconds, the stray move limit.
# An entry seen by two scans at least `grace` apart is put back on the queue (at the end
# BRPOP/BLMOVE take from: it was next in line when it was claimed).
RECOVER_SCRIPT = """
local now = tonumber(redis.call('TIME')[1])
local grace = tonumber(ARGV[1])
local moved, restored = 0, 0
for i = 4, #KEYS do
  while moved < tonumber(ARGV[2]) and redis.call('LMOVE', KEYS[i], KEYS[3], 'RIGHT', 'LEFT') do
    moved = moved + 1
  end
end
local present = {}
for _, item in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  local digest = redis.sha1hex(item)
  present[digest] = true
  local seen = redis.call('HGET', KEYS[2], digest)
  if not seen then
    redis.call('HSET', KEYS[2], digest, now)
  elseif now - tonumber(seen) >= grace then
    if redis.call('LREM', KEYS[1], 1, item) > 0 then
      redis.call('RPUSH', KEYS[3], item)
      restored = restored + 1
    end
    redis.call('HDEL', KEYS[2], digest)
  end
end
for _, digest in ipairs(redis.call('HKEYS', KEYS[2])) do
  if not present[digest] then
    redis.call('HDEL', KEYS[2], digest)
  end
end
return {restored, moved}
"""


def claimed_key(queue: str) -> str:
    """Where messages of `queue` wait between being taken and being recorded as unacked."""
    return CLAIMED_KEY.format(queue=queue)


class QoS(redis.QoS):
    """Records a delivered message as unacked and takes it off the claimed list at once."""

    def append(self, message: Any, delivery_tag: Any) -> None:
        claim = self.channel.take_claim()
        if claim is None:
            super().append(message, delivery_tag)
            return
        key, raw = claim
        delivery = message.delivery_info
        record = dumps([message._raw, delivery["exchange"], delivery["routing_key"]])
        with self.pipe_or_acquire() as pipe:  # MULTI/EXEC: all three or none
            pipe.zadd(self.unacked_index_key, {delivery_tag: time()})
            pipe.hset(self.unacked_key, delivery_tag, record)
            pipe.lrem(key, 1, raw)
            pipe.execute()
        virtual.QoS.append(self, message, delivery_tag)

    def restore_visible(self, start: int = 0, num: int = 10, interval: int = 10) -> None:
        super().restore_visible(start, num, interval)
        if (self._vrestore_count - 1) % (interval or 1) == 0:  # kombu's own throttle
            self.channel.recover_claimed(self.visibility_timeout)


class Channel(redis.Channel):
    """Consumes with BLMOVE into the queue's claimed list instead of BRPOP."""

    QoS = QoS
    # One list per queue: BLMOVE reads a single key.
    priority_steps = [0]
    # The queue whose BLMOVE is in flight, and the message being delivered: (key, raw).
    _claiming: str | None = None
    _claim: tuple[str, bytes] | None = None
    _atomic: bool | None = None

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        # kombu closes a channel (restoring its unacked messages) after a connection loss,
        # sometimes once its transport has already let go of the connection: kombu's own
        # code then fails with AttributeError on `None.hostname`, which Celery does not
        # count as a connection error, so the worker exits. As a connection error it is
        # ignored and the consumer reconnects; the unacked messages come back through the
        # visibility timeout instead.
        if getattr(self.connection, "client", None) is None:
            raise RedisConnectionError("the broker connection is already closed")
        params: dict[str, Any] = super()._connparams(asynchronous=asynchronous)
        return params

    def take_claim(self) -> tuple[str, bytes] | None:
        """The claimed entry of the message being delivered now (once), if any."""
        claim, self._claim = self._claim, None
        return claim

    def _atomic_consume(self) -> bool:
        if self._atomic is None:
            version = str(self.client.info("server").get("redis_version", "0"))
            parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
            self._atomic = not self.global_keyprefix and parts >= MINIMUM_REDIS
            if not self._atomic:
                logger.warning(
                    "Redis %s (or a global key prefix): consuming with BRPOP; a message taken"
                    " just before Redis restarts can be lost. Redis 6.2+ closes that window.",
                    version,
                )
        return self._atomic

    def _brpop_start(self, timeout: float | None = None) -> None:
        queues = self._queue_cycle.consume(len(self.active_queues))
        # BLMOVE takes one source list: a consumer of several queues (not payworker's
        # worker, which consumes PAYWORKER_QUEUE only) keeps kombu's BRPOP.
        if len(queues) != 1 or not self._atomic_consume():
            super()._brpop_start(timeout)
            return
        queue = queues[0]
        connection = self.client.connection
        self._claiming = queue
        self._in_poll = connection
        self._brpop_sent_at = monotonic()  # type: ignore[assignment]  # kombu: None
        wait = self.brpop_timeout if timeout is None else timeout
        connection.send_command("BLMOVE", queue, claimed_key(queue), "RIGHT", "LEFT", wait or 0)

    def _brpop_read(self, **options: Any) -> bool:
        queue, self._claiming = self._claiming, None
        if queue is None:
            return bool(super()._brpop_read(**options))
        try:
            try:
                raw = self.client.parse_response(self.client.connection, "BLMOVE", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if raw is None:
                raise Empty()
            self._claim = (claimed_key(queue), raw)
            try:
                self._queue_cycle.rotate(queue)
                self.connection._deliver(loads(bytes_to_str(raw)), queue)
            finally:
                # If delivery raised, the entry stays claimed and the scan brings it back.
                unrecorded = self.take_claim()
            if unrecorded is not None:
                # Delivered without an unacked record (a no-ack consumer): nothing to recover.
                self.client.lrem(unrecorded[0], 1, unrecorded[1])
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]  # kombu: False
            self._flush_brpop_reauth()

    def recover_claimed(self, grace: float) -> None:
        """Put entries claimed longer than `grace` seconds ago back on their queue."""
        if not self._atomic:
            return
        for queue in list(self.active_queues):
            keys = [claimed_key(queue), SEEN_KEY.format(queue=queue), queue]
            keys += [f"{queue}{self.sep}{p}" for p in FOREIGN_PRIORITIES]
            with self.conn_or_acquire() as client:
                restored, moved = client.eval(
                    RECOVER_SCRIPT, len(keys), *keys, int(grace), MOVE_LIMIT
                )
            if restored:
                metrics.BROKER_RESTORED.labels("claimed").inc(restored)
            if moved:
                metrics.BROKER_RESTORED.labels("priority").inc(moved)
            if restored or moved:
                logger.warning(
                    "queue %s: %d message(s) taken by a consumer that never recorded them put"
                    " back; %d moved from priority sub-queues",
                    queue,
                    restored,
                    moved,
                )


class Transport(redis.Transport):
    """Selected by celeryconfig.broker_transport for redis:// broker URLs."""

    Channel = Channel
