"""The shared Stripe rate limit against a real Redis: two separate processes on one bucket
never get more slots than the rate allows in any one-second window, and a 429 reported by
one of them slows the other."""

from __future__ import annotations

import bisect
import multiprocessing
import os
import time
import uuid
from typing import Any

import pytest
import redis

from tasks.ratelimit import ARRIVAL_JITTER, Pace, RedisLimiter
from tests.conftest import require

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
RATE = 10.0
SECONDS = 4.0


def max_in_window(times: list[float], window: float = 1.0) -> int:
    times = sorted(times)
    return max(bisect.bisect_left(times, t + window) - i for i, t in enumerate(times))


def take_slots(bucket: str, until: float, penalize_at: float | None, out: Any) -> None:
    """Child process: take slots as fast as the limiter allows until `until` (wall clock),
    recording when each one was granted (after its sleep: when the request would leave)."""
    limiter = RedisLimiter(Pace(rate=RATE, burst=1, max_wait=30), REDIS_URL, bucket)
    granted, penalized = [], None
    while time.time() < until:
        if penalize_at is not None and penalized is None and time.time() >= penalize_at:
            limiter.penalize()
            penalized = time.time()
        limiter.acquire()
        granted.append(time.time())
    out.put((os.getpid(), granted, penalized))


def run_two(
    bucket: str, seconds: float, penalize_at: float | None = None
) -> tuple[list[float], float | None]:
    """Two processes on one bucket (the second reports a 429 at `penalize_at`): every
    grant time of both, and when the 429 was reported."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    until = time.time() + 1.5 + seconds  # leave the children time to start
    procs = [
        ctx.Process(target=take_slots, args=(bucket, until, None, out)),
        ctx.Process(target=take_slots, args=(bucket, until, penalize_at, out)),
    ]
    for proc in procs:
        proc.start()
    results = [out.get(timeout=seconds + 30) for _ in procs]
    for proc in procs:
        proc.join(timeout=10)
    assert len({pid for pid, _, _ in results}) == 2
    assert all(granted for _, granted, _ in results), "each process got slots"
    penalized = next((p for _, _, p in results if p is not None), None)
    return sorted(t for _, granted, _ in results for t in granted), penalized


@pytest.fixture
def bucket() -> Any:
    require("Redis", "127.0.0.1", 6379)
    name = f"payworker:test-rate:{{{uuid.uuid4().hex[:12]}}}"
    yield name
    redis.Redis.from_url(REDIS_URL).delete(f"{name}:tat", f"{name}:penalty")


def test_two_processes_never_exceed_the_rate_in_any_second(bucket: str) -> None:
    # Given two worker processes sharing one account's bucket at 10 requests/s
    # When both take slots as fast as they can for four seconds
    granted, _ = run_two(bucket, SECONDS)
    # Then no one-second window holds more than 10 grants, counted across both processes,
    # even stretched by the jitter a request may meet on its way to Stripe
    assert max_in_window(granted, 1.0 + ARRIVAL_JITTER) <= RATE
    # and together they still use (nearly) the whole rate
    span = granted[-1] - granted[0]
    assert (len(granted) - 1) / span == pytest.approx(Pace(RATE).sustained, rel=0.1)


def test_a_429_in_one_process_slows_the_other(bucket: str) -> None:
    # Given two processes at full speed, the second of which sees a 429 after ~2.5 s
    granted, penalized = run_two(bucket, 6.5, penalize_at=time.time() + 4.0)
    assert penalized is not None
    # Then in the two seconds after the 429 both together get about half the slots they
    # got in the two seconds before it (a slot reserved before the 429 may still go out)
    before = [t for t in granted if penalized - 2.2 <= t < penalized - 0.2]
    after = [t for t in granted if penalized + 0.5 <= t < penalized + 2.5]
    assert len(before) >= 14
    assert len(after) <= 0.6 * len(before) + 1
