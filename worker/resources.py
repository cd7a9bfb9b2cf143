"""Per-process resources (engine, Stripe gateway), built on first use after the fork."""

from __future__ import annotations

import os
from dataclasses import dataclass

from sqlalchemy import Engine

from db.session import get_engine
from tasks.errors import ConfigurationFault
from tasks.gateway import StripeGateway
from tasks.redact import register_secret
from tasks.sealing import TokenSealer
from worker.settings import Settings, get_settings


@dataclass(frozen=True)
class Resources:
    settings: Settings
    engine: Engine
    gateway: StripeGateway
    sealer: TokenSealer


_by_pid: dict[int, Resources] = {}


def resources() -> Resources:
    """This process's resources. Raises ConfigurationFault when STRIPE_API_KEY is unset."""
    pid = os.getpid()
    found = _by_pid.get(pid)
    if found is None:
        settings = get_settings()
        if settings.stripe_api_key is None:
            raise ConfigurationFault("STRIPE_API_KEY is not set")
        api_key = settings.stripe_api_key.get_secret_value()
        register_secret(api_key)
        gateway = StripeGateway.build(
            api_key,
            api_base=settings.stripe_api_base,
            timeout=settings.stripe_call_timeout,
            network_retries=settings.stripe_network_retries,
        )
        sealer = TokenSealer(settings.seal_secret or api_key)
        found = Resources(settings, get_engine(settings.database_url), gateway, sealer)
        _by_pid.clear()  # anything inherited from a parent process is not ours to use
        _by_pid[pid] = found
    return found
