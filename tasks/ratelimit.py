"""Stripe's request limit, shared by every worker process through Redis.

GCRA (generic cell rate algorithm) with reservations: one Lua script reads the bucket's
theoretical arrival time (TAT) on the Redis clock, reserves the next slot and says how long
the caller must sleep before sending. Nobody polls, slots are handed out in arrival order,
and the caller sleeps outside any lock or transaction. The pace is chosen so that no window
of one second plus `ARRIVAL_SLACK` ever holds more than `rate` slots, bursts included:
the slack absorbs a late wake-up (bounded: a later one takes a new slot) and the jitter of
the request's way to Stripe, so that Stripe counts at most `rate` in any second.
A 429 from Stripe doubles the spacing of every worker for a while (`penalize`).

Without Redis (a RabbitMQ broker and no PAYWORKER_RATE_LIMIT_REDIS_URL) or while Redis is
unreachable, each process falls back to the same algorithm in memory, which bounds that
process only: N processes may then send up to N times the rate, and Stripe's 429s are what
slows them down. Both cases log a warning.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import redis

from core.errors import RateLimitedLocally

logger = logging.getLogger("payworker")

# Stripe counts a request when it arrives, not when we grant its slot. Two delays lie in
# between, and the pace leaves room for both: slots are spaced so that no window of
# 1 s + ARRIVAL_SLACK holds more than `rate` of them, hence no one-second window of
# arrivals does as long as the delays stay within these budgets.
# - A thread must start its send within WAKE_LATENESS of its slot (measured from before
#   the slot was asked for, so it is never underestimated); one that wakes later (a
#   starved CPU, the GIL) gives its slot up and takes a new one.
# - ARRIVAL_JITTER: what the request may take from that check to Stripe's counter beyond
#   what its neighbours take (building the request, another GIL wait, the network, the
#   receiver's own scheduling). We cannot check it, so it is budgeted. On the development
#   machine the send-to-arrival spread was 2-6 ms at p99 and 40 ms at most when quiet.
# 40 ms in all is what Stripe's 100/s leaves room for while still granting 95/s. The
# spacing rounds down to whole slots, so at 25/s the budget is in fact about 75 ms.
WAKE_LATENESS = 0.010
ARRIVAL_JITTER = 0.030
ARRIVAL_SLACK = WAKE_LATENESS + ARRIVAL_JITTER
# Each 429 doubles the spacing; this caps it (an eighth of the rate).
MAX_PENALTY_FACTOR = 8
# Redis must answer a slot request quickly, or we limit locally for that request.
REDIS_TIMEOUT = 1.0
# At most one "limiting locally" warning per process per this many seconds.
WARN_EVERY = 30.0

_GCRA = """
-- KEYS[1]: theoretical arrival time, microseconds on the Redis clock
-- KEYS[2]: slow-down factor set by a 429 (absent: 1), expires after the penalty
-- ARGV[1] = "acquire": ARGV[2] interval us, ARGV[3] tolerance us, ARGV[4] max wait us;
--   returns {1, wait_us} (slot reserved: send after wait_us) or {0, wait_us} (not reserved)
-- ARGV[1] = "penalize": ARGV[2] penalty ms, ARGV[3] max factor; returns the new factor
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local factor = tonumber(redis.call('GET', KEYS[2]) or '1')
if ARGV[1] == 'penalize' then
  factor = math.min(factor * 2, tonumber(ARGV[3]))
  redis.call('SET', KEYS[2], factor, 'PX', ARGV[2])
  return factor
end
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
local wait = math.max(tat - tonumber(ARGV[3]) - now, 0)
if wait > tonumber(ARGV[4]) then
  return {0, wait}
end
tat = tat + tonumber(ARGV[2]) * factor
redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX',
           math.ceil((tat - now) / 1000) + 1000)
return {1, wait}
"""


@dataclass(frozen=True)
class Pace:
    """A rate limit: at most `rate` requests in any one-second window, `burst` back to back."""

    rate: float
    burst: int = 1
    max_wait: float = 5.0
    penalty_seconds: float = 10.0

    def __post_init__(self) -> None:
        if self.rate <= self.burst:
            raise ValueError(f"rate {self.rate}/s must exceed burst {self.burst}")

    @property
    def interval(self) -> float:
        """Seconds between slots. GCRA admits at most 1 + (W + tolerance) / interval
        requests in a window W; solving for W = 1 s + ARRIVAL_SLACK gives this."""
        return (1 + ARRIVAL_SLACK) / (self.rate - self.burst)

    @property
    def tolerance(self) -> float:
        return (self.burst - 1) * self.interval

    @property
    def sustained(self) -> float:
        """Requests/s granted under constant demand."""
        return 1 / self.interval


class Limiter(Protocol):
    def acquire(self, budget: float | None = None) -> float:
        """Wait for a slot, at most `max_wait` (and `budget`) seconds; returns the wait.
        The caller sends its request right after.

        Raises:
            RateLimitedLocally: no slot within that time (none is reserved then).
        """

    def penalize(self) -> None:
        """Stripe answered 429: slow every sender down for `penalty_seconds`."""


def bucket_for(api_key: str) -> str:
    """The Redis key prefix of an account's bucket: a hash of the API key, never the key.
    The hash tag keeps both keys of a bucket in one Redis Cluster slot."""
    digest = hashlib.sha256(b"payworker-stripe-rate\0" + api_key.encode()).hexdigest()[:16]
    return f"payworker:stripe-rate:{{{digest}}}"


def _too_long(wait: float, allowed: float) -> RateLimitedLocally:
    return RateLimitedLocally(
        f"the next Stripe slot is {wait:.2f}s away, longer than the {allowed:.2f}s a"
        " request may wait"
    )


class _Reserving:
    """Reserve a slot, sleep until it, and make sure the request really leaves in it."""

    pace: Pace
    _clock: Callable[[], float]
    _sleep: Callable[[float], None]

    def _reserve(self, allowed: float) -> float:
        """Reserve the next slot if it is at most `allowed` seconds away; returns how far.

        Raises:
            RateLimitedLocally: it is further away (nothing is reserved then).
        """
        raise NotImplementedError

    def acquire(self, budget: float | None = None) -> float:
        allowed = self.pace.max_wait if budget is None else min(self.pace.max_wait, budget)
        started = self._clock()
        while True:
            asked = self._clock()
            wait = self._reserve(allowed - (asked - started))
            if wait > 0:
                self._sleep(wait)
            # A thread that wakes late (a starved CPU, a busy GIL) has missed its slot:
            # sending now could crowd the slots after it, so it takes a new one.
            if self._clock() - (asked + wait) <= WAKE_LATENESS:
                return self._clock() - started


class LocalLimiter(_Reserving):
    """The same GCRA in this process's memory: bounds this process only."""

    def __init__(
        self,
        pace: Pace,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.pace = pace
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tat = 0.0
        self._factor = 1
        self._penalty_until = 0.0

    def _reserve(self, allowed: float) -> float:
        with self._lock:
            now = self._clock()
            if now >= self._penalty_until:
                self._factor = 1
            tat = max(self._tat, now)
            # Microseconds, as in Redis: float noise must not turn "now" into a tiny wait.
            wait = max(round(tat - self.pace.tolerance - now, 6), 0.0)
            if wait > allowed:
                raise _too_long(wait, allowed)
            self._tat = tat + self.pace.interval * self._factor
        return wait

    def penalize(self) -> None:
        with self._lock:
            now = self._clock()
            factor = self._factor if now < self._penalty_until else 1
            self._factor = min(factor * 2, MAX_PENALTY_FACTOR)
            self._penalty_until = now + self.pace.penalty_seconds


class RedisLimiter(_Reserving):
    """The account's bucket in Redis, shared by every process that uses the same key.

    The Redis client is built on first use in each process (never at import, never shared
    across a fork). When Redis fails, the request is limited by `fallback` instead."""

    def __init__(
        self,
        pace: Pace,
        redis_url: str,
        bucket: str,
        *,
        fallback: LocalLimiter | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        client_factory: Callable[[str], redis.Redis] | None = None,
    ) -> None:
        self.pace = pace
        self._url = redis_url
        self._keys = [f"{bucket}:tat", f"{bucket}:penalty"]
        self._fallback = fallback or LocalLimiter(pace, clock=clock, sleep=sleep)
        self._clock = clock
        self._sleep = sleep
        self._factory = client_factory or _connect
        self._lock = threading.Lock()
        self._pid = 0
        self._script: Any = None
        self._warned_at = -WARN_EVERY

    def acquire(self, budget: float | None = None) -> float:
        try:
            return super().acquire(budget)
        except redis.RedisError as exc:
            self._warn(exc)
            return self._fallback.acquire(budget)

    def _reserve(self, allowed: float) -> float:
        args = ["acquire", _us(self.pace.interval), _us(self.pace.tolerance), _us(allowed)]
        granted, wait_us = self._run(args)
        wait = int(wait_us) / 1_000_000
        if not granted:
            raise _too_long(wait, allowed)
        return wait

    def penalize(self) -> None:
        args = ["penalize", _us(self.pace.penalty_seconds) // 1000, MAX_PENALTY_FACTOR]
        try:
            factor = self._run(args)
        except redis.RedisError as exc:
            self._warn(exc)
            self._fallback.penalize()
            return
        logger.warning("Stripe answered 429: every worker now sends at 1/%s of the rate", factor)

    def _run(self, args: list[Any]) -> Any:
        return self._script_for_this_process()(keys=self._keys, args=args)

    def _script_for_this_process(self) -> Any:
        pid = os.getpid()
        if self._pid != pid:
            with self._lock:
                if self._pid != pid:
                    self._script = self._factory(self._url).register_script(_GCRA)
                    self._pid = pid
        return self._script

    def _warn(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY:
            self._warned_at = now
            logger.warning(
                "rate limiter Redis unavailable (%s): limiting Stripe requests per process"
                " only; several workers may exceed the shared rate",
                type(exc).__name__,
            )


def _connect(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT
    )


def _us(seconds: float) -> int:
    return round(seconds * 1_000_000)
