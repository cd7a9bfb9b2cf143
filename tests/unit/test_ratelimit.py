"""The Stripe rate limiter: GCRA pacing, the 429 slow-down, the Redis script (fakeredis with
Lua) and the HTTP client that takes a slot before every request."""

from __future__ import annotations

import bisect
import http.server
import itertools
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
import redis
import stripe

from core.errors import RateLimitedLocally, RunOutOfTime
from tasks.ratelimit import (
    ARRIVAL_JITTER,
    ARRIVAL_SLACK,
    MAX_PENALTY_FACTOR,
    WAKE_LATENESS,
    LocalLimiter,
    Pace,
    RedisLimiter,
    bucket_for,
)
from tasks.stripe_http import (
    LimitedRequestsClient,
    path_template,
    set_run_deadline,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def max_in_window(times: list[float], window: float = 1.0) -> int:
    """The most timestamps in any half-open window [t, t + window)."""
    times = sorted(times)
    return max(bisect.bisect_left(times, t + window) - i for i, t in enumerate(times))


def local(rate: float, burst: int = 1, max_wait: float = 60.0) -> tuple[LocalLimiter, FakeClock]:
    clock = FakeClock()
    pace = Pace(rate=rate, burst=burst, max_wait=max_wait, penalty_seconds=10)
    return LocalLimiter(pace, clock=clock, sleep=clock.sleep), clock


# ---- pacing ----------------------------------------------------------------------------


def test_pace_leaves_room_for_the_burst_and_the_arrival_slack() -> None:
    pace = Pace(rate=100, burst=3)
    assert pace.sustained == pytest.approx((100 - 3) / (1 + ARRIVAL_SLACK))
    assert pace.tolerance == pytest.approx(2 * pace.interval)


def test_a_rate_not_above_the_burst_is_refused() -> None:
    with pytest.raises(ValueError, match="must exceed burst"):
        Pace(rate=2, burst=2)


@pytest.mark.parametrize(("rate", "burst"), [(100, 1), (25, 1), (22.5, 1), (100, 5), (10, 4)])
def test_constant_demand_never_puts_more_than_rate_in_any_second(rate: float, burst: int) -> None:
    # Given a limiter and callers that always want the next slot
    limiter, clock = local(rate, burst)
    granted = []
    # When they take slots for ten seconds
    while clock.now < 1010:
        limiter.acquire()
        granted.append(clock.now)
    # Then no one-second window (even 1 s + slack) holds more than `rate` grants
    assert max_in_window(granted, 1.0 + ARRIVAL_SLACK) <= rate
    # and, past the first burst, the sustained rate is what Pace promises
    steady = [t for t in granted if 1002 <= t < 1010]
    assert len(steady) / 8 == pytest.approx(Pace(rate, burst).sustained, rel=0.03)


@pytest.mark.parametrize(("rate", "burst"), [(100, 1), (25, 1), (22.5, 1), (10, 1), (100, 5)])
def test_late_wakeups_and_arrival_jitter_never_put_more_than_rate_in_any_second(
    rate: float, burst: int
) -> None:
    # Given callers that send on time, except that every two seconds a few in a row wake
    # as late as allowed and their requests then meet the whole arrival jitter, followed
    # by punctual ones (the worst case: the late ones crowd into the next second), and
    # once in a while one oversleeps beyond the allowance
    clock = FakeClock()
    every, crowd = int(2 * rate), int(rate * ARRIVAL_SLACK) + 1
    calls = itertools.count()
    late = False

    def sleep(seconds: float) -> None:
        nonlocal late
        n = next(calls) % every
        late = n < crowd
        overslept = 3 * WAKE_LATENESS if n == every - 3 else 0.0
        clock.sleep(seconds + (WAKE_LATENESS if late else overslept))

    pace = Pace(rate=rate, burst=burst, max_wait=60, penalty_seconds=10)
    limiter = LocalLimiter(pace, clock=clock, sleep=sleep)
    arrivals = []
    # When they send as fast as the limiter lets them for ten seconds
    while clock.now < 1010:
        limiter.acquire()
        arrivals.append(clock.now + (ARRIVAL_JITTER if late else 0.0))
    # Then Stripe never counts more than `rate` requests in any one-second window
    assert max_in_window(arrivals, 1.0) <= rate


def test_a_quiet_limiter_lets_a_burst_through_at_once() -> None:
    limiter, _ = local(rate=50, burst=4)
    waits = [limiter.acquire() for _ in range(5)]
    assert waits[:4] == [0, 0, 0, 0]
    assert waits[4] > 0


def test_a_caller_that_wakes_late_takes_a_new_slot() -> None:
    # Given a limiter whose callers oversleep once by 0.2 s (a starved CPU)
    clock = FakeClock()
    oversleeps = [0.2]

    def sleep(seconds: float) -> None:
        clock.sleep(seconds + (oversleeps.pop() if oversleeps else 0.0))

    limiter = LocalLimiter(Pace(rate=11, max_wait=5), clock=clock, sleep=sleep)
    sends = []
    for _ in range(3):
        limiter.acquire()
        sends.append(round(clock.now - 1000, 6))
    # Then the late caller did not send in its missed slot (0.102) but took a new one when
    # it woke, and the next caller is spaced after that one
    spacing = Pace(11).interval
    assert sends == [0.0, pytest.approx(spacing + 0.2), pytest.approx(2 * spacing + 0.2)]


def test_a_wait_beyond_the_cap_raises_and_reserves_nothing() -> None:
    # Given a limiter whose next slot is 3 intervals away
    limiter, clock = local(rate=6, burst=1, max_wait=60)
    for _ in range(3):
        limiter.acquire()
    clock.now -= 2 * Pace(6).interval  # two callers are still waiting for theirs
    # When a caller may wait only 0.1 s
    with pytest.raises(RateLimitedLocally) as raised:
        limiter.acquire(budget=0.1)
    # Then it is refused with our code, and the slot is still free for the next caller
    assert raised.value.code == "stripe_rate_limited_locally"
    assert limiter.acquire() == pytest.approx(3 * Pace(6).interval)


def test_a_429_halves_the_rate_until_the_penalty_expires() -> None:
    limiter, clock = local(rate=21)  # 20 slots / 1.02 s
    spacing = Pace(21).interval
    limiter.acquire()
    before = clock.now
    limiter.acquire()
    assert clock.now - before == pytest.approx(spacing)
    # When Stripe answers 429
    limiter.penalize()
    limiter.acquire()
    before = clock.now
    limiter.acquire()
    # Then slots are twice as far apart
    assert clock.now - before == pytest.approx(2 * spacing)
    # and after the penalty window the normal pace is back
    clock.now += 11
    limiter.acquire()
    before = clock.now
    limiter.acquire()
    assert clock.now - before == pytest.approx(spacing)


def test_repeated_429s_slow_down_to_an_eighth_at_most() -> None:
    limiter, clock = local(rate=21)
    for _ in range(10):
        limiter.penalize()
    limiter.acquire()
    before = clock.now
    limiter.acquire()
    assert clock.now - before == pytest.approx(MAX_PENALTY_FACTOR * Pace(21).interval)


# ---- the Redis script (fakeredis runs the Lua with lupa) -------------------------------


@pytest.fixture
def fake_server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


class SleeplessClock:
    """Real time plus the sleeps that were skipped: the limiter sees its slots arrive on
    time, and the returned waits are the schedule (Redis keeps the real clock)."""

    def __init__(self) -> None:
        self.skipped = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.skipped

    def sleep(self, seconds: float) -> None:
        self.skipped += seconds


def redis_limiter(server: fakeredis.FakeServer, rate: float = 20, **kw: Any) -> RedisLimiter:
    """A limiter with its own client (as in another process) on the shared fake server."""
    pace = Pace(rate=rate, burst=kw.pop("burst", 1), max_wait=kw.pop("max_wait", 60))
    clock = SleeplessClock()
    return RedisLimiter(
        pace,
        "redis://fake",
        bucket_for("sk_test_unit"),
        clock=clock,
        sleep=clock.sleep,
        client_factory=lambda _: fakeredis.FakeRedis(server=server),
    )


def test_two_clients_share_one_bucket_and_its_bound(fake_server: fakeredis.FakeServer) -> None:
    # Given two limiters (two processes) on the same account's bucket
    a, b = redis_limiter(fake_server), redis_limiter(fake_server)
    # When they take 60 slots between them, alternating
    start = time.time()
    sends = [start + (a if i % 2 else b).acquire() for i in range(60)]
    # Then the slots interleave into one schedule within the rate
    assert max_in_window(sends) <= 20
    assert sends[-1] - start == pytest.approx(59 * Pace(20).interval, abs=0.05)


def test_the_bucket_key_is_a_hash_never_the_api_key(fake_server: fakeredis.FakeServer) -> None:
    limiter = redis_limiter(fake_server)
    limiter.acquire()
    limiter.penalize()
    client = fakeredis.FakeRedis(server=fake_server)
    keys = [k.decode() for k in client.keys("*")]
    assert len(keys) == 2
    assert all("sk_test" not in k and k.startswith("payworker:stripe-rate:{") for k in keys)
    # and nothing is kept forever
    assert all(0 < client.pttl(k) <= 11_000 for k in keys)


def test_a_429_reported_by_one_client_slows_the_other(fake_server: fakeredis.FakeServer) -> None:
    a, b = redis_limiter(fake_server), redis_limiter(fake_server)
    spacing = Pace(20).interval
    first = b.acquire()
    second = b.acquire()
    assert second - first == pytest.approx(spacing, abs=0.01)
    # When a sees a 429
    a.penalize()
    # Then b's next slots are twice as far apart
    third = b.acquire()
    fourth = b.acquire()
    assert fourth - third == pytest.approx(2 * spacing, abs=0.01)


def test_no_slot_within_the_cap_raises(fake_server: fakeredis.FakeServer) -> None:
    limiter = redis_limiter(fake_server, rate=5, max_wait=0.5)
    for _ in range(3):  # 0, 0.255, 0.51 s away: the third is beyond the cap
        try:
            limiter.acquire()
        except RateLimitedLocally:
            break
    else:
        pytest.fail("the third slot should have been refused")


def test_redis_down_falls_back_to_limiting_this_process(caplog: Any) -> None:
    def unreachable(_: str) -> redis.Redis:
        raise redis.ConnectionError("refused")

    limiter = RedisLimiter(
        Pace(rate=10), "redis://nowhere", bucket_for("k"), client_factory=unreachable
    )
    with caplog.at_level(logging.WARNING, logger="payworker"):
        assert limiter.acquire() < 0.01
        limiter.penalize()
    assert "limiting Stripe requests per process only" in caplog.text


# ---- the HTTP client -------------------------------------------------------------------


class CountingLimiter:
    def __init__(self) -> None:
        self.acquired: list[float | None] = []
        self.penalties = 0

    def acquire(self, budget: float | None = None) -> float:
        self.acquired.append(budget)
        return 0.0

    def penalize(self) -> None:
        self.penalties += 1


class Scripted(http.server.BaseHTTPRequestHandler):
    """Answers the statuses queued in `server.statuses`, then 200."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        statuses: list[int] = self.server.statuses  # type: ignore[attr-defined]
        status = statuses.pop(0) if statuses else 200
        body = (
            b'{"id": "cus_Abc123", "object": "customer"}'
            if status == 200
            else b'{"error": {"type": "api_error", "message": "scripted"}}'
        )
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if status == 429:
            self.send_header("Stripe-Should-Retry", "false")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def scripted() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    server.statuses = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def client_for(server: Any, limiter: Any, observed: list[Any], retries: int = 1) -> Any:
    http_client = LimitedRequestsClient(
        timeout=2, limiter=limiter, observer=lambda *a: observed.append(a)
    )
    return stripe.StripeClient(
        "sk_test_unit",
        base_addresses={"api": f"http://127.0.0.1:{server.server_address[1]}"},
        max_network_retries=retries,
        http_client=http_client,
    )


def test_every_attempt_takes_a_slot_including_the_sdks_retries(scripted: Any) -> None:
    # Given Stripe answers 503 once, then 200, and the SDK may retry once
    scripted.statuses.append(503)
    limiter, observed = CountingLimiter(), []
    client = client_for(scripted, limiter, observed)
    # When a customer is created
    customer = client.v1.customers.create(params={"email": "a@example.com"})
    # Then both attempts waited for a slot and were observed
    assert customer.id == "cus_Abc123"
    assert len(limiter.acquired) == 2
    assert [(m, p, s) for m, p, s, _ in observed] == [
        ("POST", "/v1/customers", 503),
        ("POST", "/v1/customers", 200),
    ]
    assert all(seconds >= 0 for *_, seconds in observed)


def test_a_429_penalizes_the_shared_bucket(scripted: Any) -> None:
    scripted.statuses.append(429)
    limiter, observed = CountingLimiter(), []
    client = client_for(scripted, limiter, observed)
    with pytest.raises(stripe.RateLimitError):
        client.v1.customers.create(params={"email": "a@example.com"})
    assert limiter.penalties == 1
    assert observed[0][2] == 429


def test_an_unanswered_request_is_observed_without_a_status() -> None:
    limiter, observed = CountingLimiter(), []
    http_client = LimitedRequestsClient(
        timeout=0.5, limiter=limiter, observer=lambda *a: observed.append(a)
    )
    client = stripe.StripeClient(
        "sk_test_unit",
        base_addresses={"api": "http://127.0.0.1:9"},  # discard port: connection refused
        max_network_retries=0,
        http_client=http_client,
    )
    with pytest.raises(stripe.APIConnectionError):
        client.v1.customers.retrieve("cus_Abc123")
    assert observed[0][:3] == ("GET", "/v1/customers/{id}", None)


def test_a_failing_observer_does_not_fail_the_request(scripted: Any) -> None:
    def broken(*_: Any) -> None:
        raise RuntimeError("metrics are down")

    http_client = LimitedRequestsClient(timeout=2, limiter=CountingLimiter(), observer=broken)
    client = stripe.StripeClient(
        "sk_test_unit",
        base_addresses={"api": f"http://127.0.0.1:{scripted.server_address[1]}"},
        http_client=http_client,
    )
    assert client.v1.customers.create(params={"email": "a@example.com"}).id == "cus_Abc123"


def test_no_request_starts_when_its_timeout_would_outlast_the_run(scripted: Any) -> None:
    limiter, observed = CountingLimiter(), []
    client = client_for(scripted, limiter, observed)
    set_run_deadline(time.monotonic() + 1.0)  # less than the 2 s timeout
    try:
        with pytest.raises(RunOutOfTime):
            client.v1.customers.create(params={"email": "a@example.com"})
    finally:
        set_run_deadline(None)
    assert limiter.acquired == [] and observed == []


def test_the_rate_limit_wait_is_bounded_by_the_runs_time_left(scripted: Any) -> None:
    limiter, observed = CountingLimiter(), []
    client = client_for(scripted, limiter, observed)
    set_run_deadline(time.monotonic() + 5.0)
    try:
        client.v1.customers.create(params={"email": "a@example.com"})
    finally:
        set_run_deadline(None)
    (budget,) = limiter.acquired
    assert budget is not None and 2.5 < budget <= 3.0  # 5 s left minus the 2 s timeout


@pytest.mark.parametrize(
    ("url", "template"),
    [
        ("https://api.stripe.com/v1/customers", "/v1/customers"),
        ("https://api.stripe.com/v1/customers/cus_NffrFeUfNV2Hib", "/v1/customers/{id}"),
        (
            "https://api.stripe.com/v1/customers/cus_NffrFeUfNV2Hib/sources/card_1MvoiELkdIwHu7ix",
            "/v1/customers/{id}/sources/{id}",
        ),
        ("http://127.0.0.1:12111/v1/tokens/tok_abc123", "/v1/tokens/{id}"),
        (
            "https://api.stripe.com/v1/payment_methods/pm_1Q0PsIJvEtkwdCNYMSaVuRz6/attach",
            "/v1/payment_methods/{id}/attach",
        ),
        ("https://api.stripe.com/v1/charges?customer=cus_Abc1&limit=100", "/v1/charges"),
        ("https://api.stripe.com/v2/core/events/evt_123", "/v2/core/events/{id}"),
    ],
)
def test_path_templates_replace_ids(url: str, template: str) -> None:
    assert path_template(url) == template
