"""Per-process resources (engine, Stripe gateway, rate limiter, token sealer, metrics
sink), built once per process after the fork and handed to the tasks.

The worker layer creates one `ProcessResources` when it builds the Celery app and gives it
to every task class (tasks/registry.py); nothing here is a module global. Under the thread
pool every task thread of a process shares them: the engine's pool holds a connection per
concurrent task (connections are taken only inside short transactions, never across a
Stripe call), the Stripe HTTP client keeps one requests session per thread, and the
limiter's Redis client is thread-safe."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine

from core.errors import ConfigurationFault
from core.redact import register_secret
from core.settings import Settings
from db.session import get_engine
from tasks.gateway import StripeGateway
from tasks.ratelimit import Limiter, LocalLimiter, Pace, RedisLimiter, bucket_for
from tasks.sealing import TokenSealer
from tasks.telemetry import NoTelemetry, Telemetry

logger = logging.getLogger("payworker")

# Connections beyond the tasks' own: the sweep and a spare.
_SPARE_CONNECTIONS = 2
# A task holds a connection only inside its short transactions, so a thread pool needs far
# fewer connections than threads. Uncapped, 48 threads saturating one process held 23-30
# at once, mostly while waiting for the GIL mid-transaction; with the cap they wait before
# the transaction instead, and two workers stay well below Postgres' 100 connections.
_MAX_TASK_CONNECTIONS = 16


@dataclass(frozen=True)
class Resources:
    settings: Settings
    engine: Engine
    gateway: StripeGateway
    sealer: TokenSealer
    limiter: Limiter
    telemetry: Telemetry


def db_pool_size(settings: Settings, tasks_per_process: int = 1) -> int:
    """Pooled connections per process: PAYWORKER_DB_POOL_SIZE, else one per concurrent task
    (at most 16) plus spares. Threads beyond that wait for a connection, never holding one
    across a Stripe call."""
    if settings.db_pool_size:
        return settings.db_pool_size
    return min(tasks_per_process, _MAX_TASK_CONNECTIONS) + _SPARE_CONNECTIONS


def build_limiter(settings: Settings, api_key: str) -> Limiter:
    """The account's shared limiter in Redis, or a per-process one when there is no Redis."""
    pace = Pace(
        rate=settings.stripe_rate_limit,
        burst=settings.stripe_burst,
        max_wait=settings.rate_limit_wait_cap,
        penalty_seconds=settings.rate_limit_penalty_seconds,
    )
    url = settings.rate_limit_redis
    if url is None:
        return LocalLimiter(pace)
    return RedisLimiter(pace, url, bucket_for(api_key))


def build_gateway(settings: Settings, telemetry: Telemetry) -> tuple[StripeGateway, Limiter]:
    """The Stripe gateway and its limiter (the shared one when there is Redis).

    Raises:
        ConfigurationFault: STRIPE_API_KEY is unset.
    """
    if settings.stripe_api_key is None:
        raise ConfigurationFault("STRIPE_API_KEY is not set")
    api_key = settings.stripe_api_key.get_secret_value()
    register_secret(api_key)
    limiter = build_limiter(settings, api_key)
    gateway = StripeGateway.build(
        api_key,
        api_base=settings.stripe_api_base,
        timeout=settings.stripe_call_timeout,
        network_retries=settings.stripe_network_retries,
        limiter=limiter,
        observer=telemetry.stripe_request,
    )
    return gateway, limiter


def build_sealer(settings: Settings) -> TokenSealer:
    """The card-token sealer of `settings.seal_secrets`, each secret registered for masking.

    Raises:
        ConfigurationFault: no usable sealing key (a live Stripe key without
            PAYWORKER_SEAL_KEYS, a short or missing first key).
    """
    problems = settings.seal_key_problems()
    secrets = settings.seal_secrets
    if problems or not secrets:
        raise ConfigurationFault("; ".join(problems) or "no sealing key: set PAYWORKER_SEAL_KEYS")
    for secret in secrets:
        register_secret(secret)
    return TokenSealer(secrets)


def build_resources(
    settings: Settings, telemetry: Telemetry, *, tasks_per_process: int = 1
) -> Resources:
    """Everything a task needs.

    Raises:
        ConfigurationFault: STRIPE_API_KEY is unset, or no usable sealing key.
    """
    gateway, limiter = build_gateway(settings, telemetry)
    sealer = build_sealer(settings)
    engine = get_engine(
        settings.database_url,
        pool_size=db_pool_size(settings, tasks_per_process),
        max_overflow=_SPARE_CONNECTIONS,
    )
    return Resources(settings, engine, gateway, sealer, limiter, telemetry)


class ProcessResources:
    """This process's resources, built on first use after the fork (a forked child never
    uses its parent's connections)."""

    def __init__(
        self, settings: Callable[[], Settings], telemetry: Telemetry | None = None
    ) -> None:
        self._settings = settings
        self.telemetry: Telemetry = telemetry or NoTelemetry()
        # Tasks that run at once in one process, learnt at worker start (worker/bootstrap).
        self.tasks_per_process = 1
        self._built: tuple[int, Resources] | None = None
        self._lock = threading.Lock()

    def settings(self) -> Settings:
        """This process's settings, without building anything."""
        return self._settings()

    def get(self) -> Resources:
        """Raises ConfigurationFault when STRIPE_API_KEY or a usable sealing key is missing."""
        pid = os.getpid()
        built = self._built
        if built is None or built[0] != pid:
            with self._lock:
                built = self._built
                if built is None or built[0] != pid:
                    resources = build_resources(
                        self._settings(), self.telemetry, tasks_per_process=self.tasks_per_process
                    )
                    built = self._built = (pid, resources)
        return built[1]
