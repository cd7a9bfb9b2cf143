"""Prometheus metrics: a worker's counters, aggregated over its processes, and the ledger's
backlog and periodic duties are served by `payworker metrics` to a real HTTP scrape."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ROOT, WorkerProcess, worker_env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in the exposition text; 0 if absent."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


pytestmark = pytest.mark.usefixtures("no_faults")


def test_metrics_endpoint_serves_worker_counters_and_ledger_gauges(
    start_worker: Callable[..., WorkerProcess], publish, wait_for, stripe_fake, ids,
    database_url, broker_url, tmp_path: Path,
):
    # Given a worker whose processes share a metrics directory
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    worker = start_worker(concurrency=2, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    q = worker.queue
    # When it registers a user, attaches a card, charges once after a 500, and rejects
    # an amount below the minimum
    user, reg, tok, chg, small = ids("user"), ids("reg"), ids("tok"), ids("chg"), ids("small")
    publish("user_registered", queue=q, event_id=reg, user_id=user, email="m@example.com")
    publish("card_token_received", queue=q, event_id=tok, user_id=user,
            token=stripe_fake.create_card_token())
    wait_for(reg, tok)
    stripe_fake.inject(method="POST", path="^/v1/payment_intents$", status=500, times=1)
    publish("charge_requested", queue=q, event_id=chg, user_id=user, amount=500, currency="usd")
    publish("charge_requested", queue=q, event_id=small, user_id=user, amount=5, currency="usd")
    wait_for(chg, small)
    # and `payworker metrics` serves the same directory
    port = free_port()
    env = worker_env(database_url, broker_url, stripe_fake.url, q,
                     PROMETHEUS_MULTIPROC_DIR=str(metrics_dir), PAYWORKER_METRICS_PORT=str(port))
    server = subprocess.Popen([sys.executable, "-m", "worker.cli", "metrics"], cwd=ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        body = ""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    body = r.read().decode()
                break
            except OSError:
                time.sleep(0.2)
        assert body, "metrics endpoint did not answer"
    finally:
        server.terminate()
        server.wait(timeout=10)

    # Then the final outcomes, the retry and the ledger backlog are all there
    assert sample(body, "payworker_events_total", type="charge_requested",
                  status="succeeded") >= 1
    assert sample(body, "payworker_events_total", type="charge_requested", status="failed") >= 1
    assert sample(body, "payworker_events_total", type="user_registered",
                  status="succeeded") >= 1
    assert sample(body, "payworker_retries_total", type="charge_requested",
                  reason="stripe_outcome_unknown") >= 1
    assert sample(body, "payworker_event_outcome_seconds_count", type="charge_requested") >= 2
    # and the charge outcomes by API: one PaymentIntent paid, one charge refused before it
    assert sample(body, "payworker_charge_outcomes_total", api="payment_intents",
                  outcome="succeeded") == 1
    assert sample(body, "payworker_charge_outcomes_total", api="payment_intents",
                  outcome="failed") == 1
    assert sample(body, "payworker_ledger_events", type="charge_requested",
                  status="succeeded") >= 1
    assert sample(body, "payworker_stripe_requests_total", method="POST",
                  endpoint="/v1/payment_intents", outcome="500") >= 1
    assert sample(body, "payworker_stripe_requests_total", method="POST",
                  endpoint="/v1/payment_intents", outcome="200") >= 1
    assert sample(body, "payworker_stripe_request_seconds_count", method="GET") >= 1
    assert re.search(r"^payworker_oldest_unfinished_event_age_seconds \S+$", body, re.M)
    assert re.search(r"^payworker_retries_due \S+$", body, re.M)
    # and the sweep that published the retry: counted by the worker that leads the queue,
    # and its last run, fresh, read from the ledger
    assert sample(body, "payworker_redrives_total", reason="retry_due") >= 1
    age = sample(body, "payworker_duty_last_run_age_seconds", queue=q, duty="sweep")
    limit = sample(body, "payworker_duty_stale_after_seconds", queue=q, duty="sweep")
    assert re.search(rf'^payworker_duty_last_run_age_seconds{{.*queue="{q}".*}} \S+$', body, re.M)
    assert 0 <= age < limit, (age, limit)
