"""payworker's throughput benchmark (not a test): `make bench`, or `python -m bench --help`.

Starts a fast Stripe stub and its own workers on a fresh database and queue, and measures:

1. overhead ratio: charges/s through payworker vs. a bare task (one POST, one INSERT),
   same stub, broker, pool and run, rate limit out of the way;
2. latency-bound rate: Stripe latency 300 ms, limit 100/s: sustained charges/s, and the
   most requests the stub saw in any one-second window;
3. publish-to-outcome latency p50/p95/p99 at 50 charges/s with 300 ms Stripe latency;
4. peak memory (RSS and PSS summed over the worker processes) during run 2;
5. scaling: runs 1, 2 and 3 again with two worker processes sharing the limit.

Customers and cards are seeded straight into Postgres: only charge_requested is measured.
Prints a table and writes bench/results/latest.json."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis
from sqlalchemy import create_engine

from bench.load import BARE, PAYWORKER, Load, Publisher, percentile, sustained_rate
from bench.services import (
    PUBLISHER_APP_NAME,
    ROOT,
    CpuMeter,
    MemorySampler,
    StubProcess,
    Worker,
    drop_database,
    fresh_database,
    seed_users,
)
from bench.stub import arrival_lag, max_in_window

RESULTS = ROOT / "bench" / "results"
# High enough that the limiter never waits, so run 1 measures payworker, not the limit.
UNLIMITED = 100_000.0


def parse_args() -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="smoke run: a few seconds per run")
    p.add_argument("--pool", default=env("BENCH_POOL", "threads"))
    p.add_argument("--concurrency", type=int, default=int(env("BENCH_CONCURRENCY", "48")))
    p.add_argument(
        "--overhead-seconds", type=float, default=float(env("BENCH_OVERHEAD_SECONDS", "30"))
    )
    p.add_argument(
        "--overhead-latency", type=float, default=float(env("BENCH_OVERHEAD_LATENCY", "0.05"))
    )
    p.add_argument("--rate-seconds", type=float, default=float(env("BENCH_RATE_SECONDS", "60")))
    p.add_argument(
        "--latency-seconds", type=float, default=float(env("BENCH_LATENCY_SECONDS", "60"))
    )
    p.add_argument("--warmup", type=float, default=float(env("BENCH_WARMUP_SECONDS", "5")))
    p.add_argument("--stripe-latency", type=float, default=0.3)
    p.add_argument("--limit", type=float, default=100.0, help="PAYWORKER_STRIPE_RATE of run 2")
    p.add_argument("--stress-limit", type=float, default=25.0, help="limit of run 5's last part")
    p.add_argument("--paced-rate", type=float, default=50.0, help="charges/s of run 3")
    p.add_argument("--only", default="1,2,3,5", help="runs to do (4 is measured in 2)")
    p.add_argument("--users", type=int, default=1000)
    p.add_argument(
        "--pg-url", default=env("BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432")
    )
    p.add_argument("--broker-url", default=env("BENCH_BROKER_URL", "redis://127.0.0.1:6379/12"))
    p.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    p.add_argument("--keep-db", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.overhead_seconds, args.rate_seconds, args.latency_seconds = 8.0, 10.0, 8.0
        args.warmup = 2.0
    return args


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run_id = uuid.uuid4().hex[:8]
        self.db_name = "payworker_bench"
        self.logs = RESULTS / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.sends = RESULTS / "sends"
        self.sends.mkdir(parents=True, exist_ok=True)
        for old in self.sends.glob("sends-*.txt"):
            old.unlink()
        self.db_url = fresh_database(args.pg_url, self.db_name)
        self.users = seed_users(self.db_url, args.users)
        self.engine = create_engine(
            self.db_url, connect_args={"application_name": PUBLISHER_APP_NAME}
        )
        self.queue = f"bench_{self.run_id}"
        self.stub = StubProcess(args.stripe_latency, self.logs)
        self.publisher = Publisher(args.broker_url, self.queue, self.users, self.engine)

    def close(self) -> None:
        self.stub.stop()
        self.publisher.app.close()
        self.engine.dispose()
        redis.Redis.from_url(self.args.broker_url).delete(self.queue)
        if not self.args.keep_db:
            drop_database(self.args.pg_url, self.db_name)

    def start_workers(self, count: int, rate: float) -> list[Worker]:
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "DATABASE_URL": self.db_url,
            "CELERY_BROKER_URL": self.args.broker_url,
            # A key of its own: the limiter's bucket is per key, so no other run shares it.
            "STRIPE_API_KEY": f"sk_test_bench_{self.run_id}",
            "STRIPE_API_BASE": self.stub.url,
            "PAYWORKER_QUEUE": self.queue,
            "PAYWORKER_POOL": self.args.pool,
            "PAYWORKER_CONCURRENCY": str(self.args.concurrency),
            "PAYWORKER_STRIPE_RATE": str(rate),
            "BENCH_SENDS_DIR": str(self.sends),
        }
        workers = [
            Worker(env, f"bench{i}-{self.run_id}-{int(time.time())}", self.logs)
            for i in range(count)
        ]
        for worker in workers:
            worker.wait_ready()
        time.sleep(1.0)  # let the consumers subscribe
        return workers

    def cpu_meter(self, workers: list[Worker]) -> CpuMeter:
        port = urlsplit(self.args.broker_url).port or 6379
        meter = CpuMeter(workers, self.stub, self.engine, port)
        meter.start()
        return meter

    def in_flight(self, workers: int) -> int:
        return 2 * workers * self.args.concurrency + 100

    # ---- run 1 ---------------------------------------------------------------------------

    def overhead(self, workers: int) -> dict[str, Any]:
        a = self.args
        self.stub.set_latency(a.overhead_latency)
        procs = self.start_workers(workers, UNLIMITED)
        try:
            rates, cpu = {}, {}
            for kind in (BARE, PAYWORKER):
                meter = self.cpu_meter(procs)
                load = self.publisher.saturate(
                    kind,
                    f"r1-{workers}-{kind}-{self.run_id}-",
                    a.overhead_seconds,
                    self.in_flight(workers),
                )
                cpu[kind] = per_charge(meter.used(), len(load.published))
                rates[kind] = self._sustained(load, a.overhead_seconds)
        finally:
            for proc in procs:
                proc.stop()
        return {
            "workers": workers,
            "stripe_latency_s": a.overhead_latency,
            "seconds": a.overhead_seconds,
            "bare_per_s": round(rates[BARE]["rate"], 1),
            "payworker_per_s": round(rates[PAYWORKER]["rate"], 1),
            "ratio": round(rates[PAYWORKER]["rate"] / rates[BARE]["rate"], 3),
            "cpu_ms_per_charge": cpu,
            "not_succeeded": rates[PAYWORKER]["not_succeeded"],
        }

    def _sustained(self, load: Load, seconds: float) -> dict[str, Any]:
        rows = self.publisher.outcomes(load)
        times = [t for _, t, _ in rows]
        start = load.started + self.args.warmup
        return {
            "rate": sustained_rate(times, start, load.started + seconds),
            "not_succeeded": sum(1 for _, _, s in rows if s != "succeeded"),
            "charges": len(rows),
        }

    # ---- runs 2 and 4 --------------------------------------------------------------------

    def rate_limited(
        self, workers: int, limit: float | None = None, seconds: float | None = None
    ) -> dict[str, Any]:
        a = self.args
        limit = limit or a.limit
        seconds = seconds or a.rate_seconds
        self.stub.set_latency(a.stripe_latency)
        procs = self.start_workers(workers, limit)
        try:
            meter = self.cpu_meter(procs)
            with MemorySampler(procs, self.engine) as memory:
                load = self.publisher.saturate(
                    PAYWORKER,
                    f"r2-{workers}-{limit:g}-{self.run_id}-",
                    a.warmup + seconds,
                    self.in_flight(workers),
                )
            cpu = per_charge(meter.used(), len(load.published))
        finally:
            for proc in procs:
                proc.stop()
        measured = self._sustained(load, a.warmup + seconds)
        window = self.stub.stats(
            since=load.started + a.warmup, until=load.started + a.warmup + seconds
        )
        ended = time.time()
        whole = self.stub.stats(since=load.started, until=ended)
        sent = sent_between(self.sends, load.started, ended)
        return {
            "workers": workers,
            "stripe_latency_s": a.stripe_latency,
            "limit_per_s": limit,
            "seconds": seconds,
            "charges_per_s": round(measured["rate"], 1),
            "stub_requests_per_s": round(window["requests"] / seconds, 1),
            "max_requests_in_any_second": whole["max_in_any_second"],
            "max_sent_in_any_second": max_in_window(sent),
            # Send (worker) to arrival (stub): the jitter the limiter's slack must absorb.
            "arrival_lag": arrival_lag(sent, self.stub.arrivals(load.started, ended)),
            "stub_per_second": window["per_second"],
            "not_succeeded": measured["not_succeeded"],
            "cpu_ms_per_charge": cpu,
            "memory": {
                "peak_rss_mb": round(memory.peak_rss_kb / 1024, 1),
                "peak_pss_mb": round(memory.peak_pss_kb / 1024, 1),
                "processes": memory.processes,
            },
            "peak_db_connections": memory.peak_db_connections,
        }

    # ---- run 3 ---------------------------------------------------------------------------

    def latency(self, workers: int) -> dict[str, Any]:
        a = self.args
        self.stub.set_latency(a.stripe_latency)
        procs = self.start_workers(workers, a.limit)
        try:
            load = self.publisher.paced(
                PAYWORKER, f"r3-{workers}-{self.run_id}-", a.paced_rate, a.latency_seconds
            )
        finally:
            for proc in procs:
                proc.stop()
        rows = self.publisher.outcomes(load)
        took = [t - load.published[e] for e, t, _ in rows]
        return {
            "workers": workers,
            "rate_per_s": a.paced_rate,
            "stripe_latency_s": a.stripe_latency,
            "seconds": a.latency_seconds,
            "charges": len(rows),
            "p50_s": round(percentile(took, 50), 3),
            "p95_s": round(percentile(took, 95), 3),
            "p99_s": round(percentile(took, 99), 3),
            "max_s": round(max(took), 3),
            "not_succeeded": sum(1 for _, _, s in rows if s != "succeeded"),
        }


def sent_between(folder: Path, start: float, end: float) -> list[float]:
    """Send times the workers logged (BENCH_SENDS_DIR) within [start, end)."""
    times = []
    for path in folder.glob("sends-*.txt"):
        times += [t for t in map(float, path.read_text().split()) if start <= t < end]
    return times


def per_charge(used: dict[str, float], charges: int) -> dict[str, float]:
    """CPU milliseconds per charge, by part and in total (Redis: the whole server)."""
    out = {part: round(1000 * seconds / max(1, charges), 2) for part, seconds in used.items()}
    out["total"] = round(sum(out.values()), 2)
    return out


def machine() -> dict[str, Any]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_average_at_start": os.getloadavg(),
    }


def verdicts(results: dict[str, Any]) -> dict[str, bool]:
    out: dict[str, bool] = {}
    runs = results["runs"]
    if "overhead" in runs:
        out["1 overhead ratio >= 0.6"] = runs["overhead"]["ratio"] >= 0.6
    if "rate_limited" in runs:
        r2 = runs["rate_limited"]
        out["2 sustained >= 95/s"] = r2["charges_per_s"] >= 95
        out["2 max in any second <= 100"] = r2["max_requests_in_any_second"] <= r2["limit_per_s"]
        out["4 peak RSS <= 300 MB"] = r2["memory"]["peak_rss_mb"] <= 300
    if "latency" in runs:
        out["3 p95 <= 1 s"] = runs["latency"]["p95_s"] <= 1.0
    if "scaling_below_capacity" in runs:
        r5 = runs["scaling_below_capacity"]
        out["5 two workers below capacity: max in any second <= limit"] = (
            r5["max_requests_in_any_second"] <= r5["limit_per_s"]
        )
        out["5 two workers below capacity: max sent in any second <= limit"] = (
            r5["max_sent_in_any_second"] <= r5["limit_per_s"]
        )
    if "scaling_latency" in runs:
        out["5 two workers: p95 <= 1 s"] = runs["scaling_latency"]["p95_s"] <= 1.0
    if "scaling_rate_limited" in runs:
        r5 = runs["scaling_rate_limited"]
        out["5 two workers: max in any second <= limit"] = (
            r5["max_requests_in_any_second"] <= r5["limit_per_s"]
        )
    return out


def _cpu(cpu: dict[str, float]) -> str:
    return f"{cpu['total']} ({cpu['worker']}/{cpu['postgres']}/{cpu['redis_server']}/{cpu['stub']})"


def table(results: dict[str, Any]) -> str:
    runs, cfg = results["runs"], results["config"]
    rows = [(f"payworker bench: pool={cfg['pool']} concurrency={cfg['concurrency']}", "")]
    rows.append((f"{results['machine']['cpus']} cpus, {results['machine']['cpu_model']}", ""))
    if o := runs.get("overhead"):
        rows += [
            ("1 bare / payworker charges/s", f"{o['bare_per_s']} / {o['payworker_per_s']}"),
            ("1 overhead ratio (target >= 0.6)", o["ratio"]),
            (
                "1 CPU ms/charge, bare: total (wrk/pg/redis/stub)",
                _cpu(o["cpu_ms_per_charge"][BARE]),
            ),
            ("1 CPU ms/charge, payworker", _cpu(o["cpu_ms_per_charge"][PAYWORKER])),
        ]
    if r := runs.get("rate_limited"):
        rows += [
            ("2 sustained charges/s (target >= 95)", r["charges_per_s"]),
            ("2 max requests in any 1 s: stub / sent (<= 100)", _max(r)),
            ("2 CPU ms/charge: total (wrk/pg/redis/stub)", _cpu(r["cpu_ms_per_charge"])),
            ("4 peak RSS / PSS MB (target RSS <= 300)", _mem(r)),
        ]
    if lat := runs.get("latency"):
        rows.append(
            (
                "3 p50 / p95 / p99 s (target p95 <= 1)",
                f"{lat['p50_s']} / {lat['p95_s']} / {lat['p99_s']}",
            )
        )
    if o := runs.get("scaling_overhead"):
        rows += [
            ("5 two workers: bare / payworker /s", f"{o['bare_per_s']} / {o['payworker_per_s']}"),
            ("5 two workers: overhead ratio", o["ratio"]),
        ]
    if r := runs.get("scaling_rate_limited"):
        rows += [
            ("5 two workers: sustained charges/s", r["charges_per_s"]),
            ("5 two workers: max in any 1 s: stub / sent", _max(r)),
            ("5 two workers: CPU ms/charge", _cpu(r["cpu_ms_per_charge"])),
            ("5 two workers: peak RSS / PSS MB", _mem(r)),
        ]
    if lat := runs.get("scaling_latency"):
        rows.append(
            (
                "5 two workers: p50 / p95 / p99 s",
                f"{lat['p50_s']} / {lat['p95_s']} / {lat['p99_s']}",
            )
        )
    if r := runs.get("scaling_below_capacity"):
        rows += [
            (f"5 two workers, limit {r['limit_per_s']:g}/s: charges/s", r["charges_per_s"]),
            (f"5 two workers, limit {r['limit_per_s']:g}/s: max in 1 s: stub / sent", _max(r)),
        ]  # fmt: skip
    rows += [(name, "met" if ok else "MISSED") for name, ok in results["targets"].items()]
    return "\n".join(f"{name:<50} {value!s:>28}" for name, value in rows)


def _max(run: dict[str, Any]) -> str:
    return f"{run['max_requests_in_any_second']} / {run['max_sent_in_any_second']}"


def _mem(run: dict[str, Any]) -> str:
    return f"{run['memory']['peak_rss_mb']} / {run['memory']['peak_pss_mb']}"


def main() -> None:
    args = parse_args()
    only = {int(x) for x in args.only.split(",") if x}
    bench = Bench(args)
    results: dict[str, Any] = {
        "machine": machine(),
        "config": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if k not in ("pg_url", "broker_url")
        },
        "seeded": "customers and default cards written straight to Postgres:"
        " only charge_requested is measured",
        "runs": {},
    }
    runs = results["runs"]
    try:
        if 1 in only:
            runs["overhead"] = bench.overhead(1)
        if 2 in only:
            runs["rate_limited"] = bench.rate_limited(1)
        if 3 in only:
            runs["latency"] = bench.latency(1)
        if 5 in only:
            runs["scaling_overhead"] = bench.overhead(2)
            runs["scaling_rate_limited"] = bench.rate_limited(2)
            runs["scaling_latency"] = bench.latency(2)
            # A limit below what the workers could send: the limiter, not the CPU, decides.
            runs["scaling_below_capacity"] = bench.rate_limited(
                2, limit=args.stress_limit, seconds=args.rate_seconds / 2
            )
    finally:
        bench.close()
    results["machine"]["load_average_at_end"] = os.getloadavg()
    results["targets"] = verdicts(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(table(results))
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
