"""A fast Stripe stub for the benchmark: canned JSON for `POST /v1/charges` and
`POST /v1/payment_intents` (succeeded at once: PAYWORKER_CHARGE_API picks which), a configurable
latency, and a log of arrival times to count requests per second.

Run: ``python -m bench.stub --port 12199 --latency 0.3`` (127.0.0.1 only).
Control: ``GET /_stub/stats?since=T`` (counts of arrivals at or after wall time T),
``GET /_stub/arrivals?since=T&until=U`` (the arrival times themselves),
``POST /_stub/latency?seconds=S``, ``POST /_stub/reset``.

localstripe is far too slow to stand in for Stripe at 100+ requests/s; this answers in
microseconds plus the configured latency, so the benchmark measures payworker."""

from __future__ import annotations

import argparse
import asyncio
import bisect
import itertools
import json
import time
from typing import Any

from aiohttp import web

_ids = itertools.count(1)


class Stub:
    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.arrivals: list[float] = []  # wall clock, in arrival order
        self.statuses: dict[int, int] = {}

    async def _arrive(self, request: web.Request) -> tuple[Any, dict[str, str]]:
        """Note the arrival, wait the latency; the form and its metadata."""
        self.arrivals.append(time.time())
        form = await request.post()
        if self.latency:
            await asyncio.sleep(self.latency)
        metadata = {
            key[len("metadata[") : -1]: str(value)
            for key, value in form.items()
            if key.startswith("metadata[")
        }
        return form, metadata

    def _answer(self, body: dict[str, Any]) -> web.Response:
        self.statuses[200] = self.statuses.get(200, 0) + 1
        return web.json_response(body, headers={"Request-Id": f"req_{len(self.arrivals)}"})

    async def payment_intent(self, request: web.Request) -> web.Response:
        """A PaymentIntent created, confirmed and succeeded in one call (off-session, no
        3-D Secure), with its charge as `latest_charge`, as API version 2026-10-28 shows it."""
        form, metadata = await self._arrive(request)
        n = next(_ids)
        intent_id = f"pi_bench{n:012d}"
        body = {
            "id": intent_id,
            "object": "payment_intent",
            "amount": int(str(form.get("amount", "0"))),
            "amount_received": int(str(form.get("amount", "0"))),
            "currency": form.get("currency", "usd"),
            "customer": form.get("customer"),
            "payment_method": form.get("payment_method"),
            "client_secret": f"{intent_id}_secret_bench",
            "created": int(time.time()),
            "status": "succeeded",
            "latest_charge": f"ch_bench{n:012d}",
            "last_payment_error": None,
            "next_action": None,
            "metadata": metadata,
            "livemode": False,
        }
        return self._answer(body)

    async def charge(self, request: web.Request) -> web.Response:
        form, metadata = await self._arrive(request)
        body = {
            "id": f"ch_bench{next(_ids):012d}",
            "object": "charge",
            "amount": int(str(form.get("amount", "0"))),
            "currency": form.get("currency", "usd"),
            "customer": form.get("customer"),
            "source": {"id": form.get("source"), "object": "card"},
            "status": "succeeded",
            "paid": True,
            "failure_code": None,
            "failure_message": None,
            "outcome": {"type": "authorized", "reason": None},
            "metadata": metadata,
            "livemode": False,
        }
        return self._answer(body)

    async def stats(self, request: web.Request) -> web.Response:
        since = float(request.query.get("since", "0"))
        until = float(request.query.get("until", "inf"))
        times = [t for t in self.arrivals if since <= t < until]
        return web.json_response(summarise(times))

    async def arrivals_between(self, request: web.Request) -> web.Response:
        since = float(request.query.get("since", "0"))
        until = float(request.query.get("until", "inf"))
        return web.json_response([t for t in self.arrivals if since <= t < until])

    async def set_latency(self, request: web.Request) -> web.Response:
        self.latency = float(request.query["seconds"])
        return web.json_response({"latency": self.latency})

    async def reset(self, _: web.Request) -> web.Response:
        self.arrivals.clear()
        self.statuses.clear()
        return web.json_response({"ok": True})


def max_in_window(times: list[float], window: float = 1.0) -> int:
    """The most timestamps in any half-open window [t, t + window)."""
    times = sorted(times)
    return max((bisect.bisect_left(times, t + window) - i for i, t in enumerate(times)), default=0)


def arrival_lag(sent: list[float], arrived: list[float]) -> dict[str, float] | None:
    """How long after its logged send each request was counted by the stub, pairing the
    k-th send with the k-th arrival (requests overtaking each other blur single pairs, not
    the spread). None when the counts differ (a request still in flight at either end)."""
    if not sent or len(sent) != len(arrived):
        return None
    lags = sorted(1000 * (a - s) for s, a in zip(sorted(sent), sorted(arrived), strict=True))

    def at(q: float) -> float:
        return round(lags[min(len(lags) - 1, round(q * (len(lags) - 1)))], 1)

    return {"p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": round(lags[-1], 1)}


def summarise(times: list[float]) -> dict[str, Any]:
    """Requests, the busiest sliding one-second window, and a per-second histogram."""
    if not times:
        return {"requests": 0, "max_in_any_second": 0, "per_second": []}
    times = sorted(times)
    busiest = max_in_window(times)
    start = int(times[0])
    per_second = [0] * (int(times[-1]) - start + 1)
    for t in times:
        per_second[int(t) - start] += 1
    return {
        "requests": len(times),
        "first": times[0],
        "last": times[-1],
        "max_in_any_second": busiest,
        "per_second_start": start,
        "per_second": per_second,
    }


def make_app(latency: float) -> web.Application:
    stub = Stub(latency)
    app = web.Application()
    app.router.add_post("/v1/charges", stub.charge)
    app.router.add_post("/v1/payment_intents", stub.payment_intent)
    app.router.add_get("/_stub/stats", stub.stats)
    app.router.add_get("/_stub/arrivals", stub.arrivals_between)
    app.router.add_post("/_stub/latency", stub.set_latency)
    app.router.add_post("/_stub/reset", stub.reset)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=12199)
    parser.add_argument("--latency", type=float, default=0.0)
    args = parser.parse_args()
    print(json.dumps({"port": args.port, "latency": args.latency}), flush=True)
    web.run_app(
        make_app(args.latency),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
        backlog=1024,
    )


if __name__ == "__main__":
    main()
