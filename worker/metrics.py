"""Prometheus metrics. Workers count what they do; `payworker metrics` serves those counts
(aggregated over every worker process through PROMETHEUS_MULTIPROC_DIR) together with the
ledger's view (backlog, oldest unfinished event, dead events), read from Postgres at scrape.

Names are documented in docs/operations.md; keep them stable, alerts depend on them."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select

from core.settings import Settings, get_settings
from db.duties import read_duties
from db.models import PaymentEvent

# Stripe calls take from tens of milliseconds to the client timeout.
_STRIPE_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10, 20, 30)
# From first receipt to outcome: sub-second normally, minutes when waiting or retrying.
_OUTCOME_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600)

EVENTS = Counter(
    "payworker_events_total",
    "Events that reached a final status, by message type and status.",
    ["type", "status"],
)
STRIPE_REQUESTS = Counter(
    "payworker_stripe_requests_total",
    "HTTP requests sent to Stripe, by method, endpoint and outcome (status code or error).",
    ["method", "endpoint", "outcome"],
)
STRIPE_LATENCY = Histogram(
    "payworker_stripe_request_seconds",
    "Latency of Stripe HTTP requests.",
    ["method", "endpoint"],
    buckets=_STRIPE_BUCKETS,
)
RETRIES = Counter(
    "payworker_retries_total",
    "Retries scheduled in the ledger, by message type and reason (error code).",
    ["type", "reason"],
)
OUTCOME_SECONDS = Histogram(
    "payworker_event_outcome_seconds",
    "Seconds from an event's first receipt to its final status.",
    ["type", "status"],
    buckets=_OUTCOME_BUCKETS,
)
REDRIVES = Counter(
    "payworker_redrives_total",
    "Events published again by the sweeper, by reason.",
    ["reason"],
)
BROKER_RESTORED = Counter(
    "payworker_broker_messages_restored_total",
    "Messages the Redis transport put back on their queue, by reason: claimed (taken by a"
    " consumer that never recorded them) or priority (found on a priority sub-queue).",
    ["reason"],
)

MESSAGES_REFUSED = Counter(
    "payworker_messages_refused_total",
    "Messages refused as not authenticated (PAYWORKER_MESSAGE_KEYS), by task and reason.",
    ["task", "reason"],
)

CHARGE_OUTCOMES = Counter(
    "payworker_charge_outcomes_total",
    "Charges by API (payment_intents, charges) and outcome: succeeded, failed, canceled"
    " (the PaymentIntent), action_required (began to wait for the customer's 3-D Secure).",
    ["api", "outcome"],
)


class PrometheusTelemetry:
    """The task layer's metrics sink (tasks/telemetry.py), as Prometheus counters."""

    def event_finished(self, message_type: str, status: str, age_seconds: float) -> None:
        EVENTS.labels(message_type, status).inc()
        OUTCOME_SECONDS.labels(message_type, status).observe(age_seconds)

    def retry_scheduled(self, message_type: str, reason: str) -> None:
        RETRIES.labels(message_type, reason).inc()

    def redriven(self, reason: str, count: int) -> None:
        REDRIVES.labels(reason).inc(count)

    def stripe_request(
        self, method: str, endpoint: str, status: int | None, seconds: float
    ) -> None:
        outcome = str(status) if status is not None else "error"
        STRIPE_REQUESTS.labels(method, endpoint, outcome).inc()
        STRIPE_LATENCY.labels(method, endpoint).observe(seconds)

    def message_refused(self, task: str, reason: str) -> None:
        MESSAGES_REFUSED.labels(task, reason).inc()

    def charge_outcome(self, api: str, outcome: str) -> None:
        CHARGE_OUTCOMES.labels(api, outcome).inc()


class LedgerCollector(Collector):
    """Gauges read from payment_events and payworker_duties at scrape time: true across all
    workers."""

    def __init__(self, engine: Engine, settings: Settings | None = None) -> None:
        self._engine = engine
        self._settings = settings or get_settings()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        backlog = GaugeMetricFamily(
            "payworker_ledger_events", "Events in the ledger by type and status.",
            labels=["type", "status"],
        )  # fmt: skip
        oldest = GaugeMetricFamily(
            "payworker_oldest_unfinished_event_age_seconds",
            "Age of the oldest event still received or processing (0 when none).",
        )
        due = GaugeMetricFamily(
            "payworker_retries_due", "Unfinished, unleased events whose next attempt is due."
        )
        with self._engine.connect() as conn:
            for type_, status, count in conn.execute(
                select(PaymentEvent.type, PaymentEvent.status, func.count()).group_by(
                    PaymentEvent.type, PaymentEvent.status
                )
            ):
                backlog.add_metric([type_, status], count)
            unfinished = PaymentEvent.status.in_(["received", "processing"])
            first = conn.execute(select(func.min(PaymentEvent.created_at)).where(unfinished))
            created = first.scalar()
            overdue = conn.execute(
                select(func.count()).where(
                    unfinished,
                    PaymentEvent.locked_until.is_(None),
                    PaymentEvent.next_attempt_at <= func.now(),
                )
            ).scalar()
        oldest.add_metric([], max(0.0, time.time() - created.timestamp()) if created else 0.0)
        due.add_metric([], float(overdue or 0))
        yield from (backlog, oldest, due)
        yield from self._duties()

    def _duties(self) -> Iterator[GaugeMetricFamily]:
        """Per queue and duty: seconds since its last run, and how many may pass before
        that means nobody leads it (`payworker status` warns then)."""
        age = GaugeMetricFamily(
            "payworker_duty_last_run_age_seconds",
            "Seconds since a periodic duty (sweep, token_expiry) of a queue last ran; before"
            " a first run, since its leader took over.",
            labels=["queue", "duty"],
        )
        stale_after = GaugeMetricFamily(
            "payworker_duty_stale_after_seconds",
            "Age of a duty's last run beyond which it is overdue: 3 periods plus a lease.",
            labels=["queue", "duty"],
        )
        with self._engine.connect() as conn:
            rows = read_duties(conn)
        now = time.time()
        for row in rows:
            since = row.last_run_at or row.leader_since
            if since is not None:
                age.add_metric([row.queue, row.name], max(0.0, now - since.timestamp()))
            limit = self._settings.duty_stale_after(row.period_seconds)
            stale_after.add_metric([row.queue, row.name], limit)
        yield from (age, stale_after)


def registry_for_scrape(
    engine: Engine, multiproc_dir: str | None, settings: Settings | None = None
) -> CollectorRegistry:
    """The registry `payworker metrics` serves: every worker process's counters (multiprocess
    mode when PROMETHEUS_MULTIPROC_DIR is set) and the ledger gauges."""
    registry = CollectorRegistry()
    if multiproc_dir:
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        from prometheus_client import REGISTRY

        registry = REGISTRY
    registry.register(LedgerCollector(engine, settings))
    return registry
