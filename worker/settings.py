"""The one place that reads the environment."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres:postgres@127.0.0.1:5432/payworker"
# Stripe forgets an idempotency key 24 hours after its first use; we stop trusting a key
# an hour earlier and look for the object by its metadata instead.
DEFAULT_KEY_WINDOW = 23 * 3600
# While Postgres is unreachable a message waits in the worker at most this long before it
# goes back to the broker (it cannot be scheduled in a ledger it cannot reach).
MAX_DB_DOWN_PAUSE = 10.0


class Settings(BaseSettings):
    """Every knob of payworker, read from the environment once per process."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    database_url: str = Field(DEFAULT_DATABASE_URL, alias="DATABASE_URL")
    broker_url: str = Field("redis://127.0.0.1:6379/0", alias="CELERY_BROKER_URL")
    stripe_api_key: SecretStr | None = Field(None, alias="STRIPE_API_KEY")
    stripe_api_base: str | None = Field(None, alias="STRIPE_API_BASE")
    queue: str = Field("payments", alias="PAYWORKER_QUEUE", min_length=1)

    # Seconds one Stripe HTTP call may take before we treat its outcome as unknown.
    stripe_timeout: float = Field(20.0, alias="PAYWORKER_STRIPE_TIMEOUT", gt=0)
    # The SDK's own retries reuse our idempotency key, so they are safe; they smooth over
    # a dropped connection without a round trip through the ledger.
    stripe_network_retries: int = Field(1, alias="PAYWORKER_STRIPE_NETWORK_RETRIES", ge=0, le=5)
    stripe_key_window_seconds: int = Field(
        DEFAULT_KEY_WINDOW, alias="PAYWORKER_STRIPE_KEY_WINDOW_SECONDS", ge=1
    )

    # How long an out-of-order message waits for its prerequisite (customer or card).
    prerequisite_wait_seconds: int = Field(900, alias="PAYWORKER_PREREQUISITE_WAIT_SECONDS", ge=0)
    # Transient failures tolerated per event before it is declared dead.
    max_attempts: int = Field(8, alias="PAYWORKER_MAX_ATTEMPTS", ge=1)
    retry_backoff_base: float = Field(2.0, alias="PAYWORKER_RETRY_BACKOFF_BASE", gt=0)
    retry_backoff_max: float = Field(120.0, alias="PAYWORKER_RETRY_BACKOFF_MAX", gt=0)

    # A claimed event is ours for this long; a claim older than this means its worker died.
    # It is also the hard time limit of one task run.
    lease_seconds: int = Field(90, alias="PAYWORKER_LEASE_SECONDS", ge=2)
    # The sweeper's period: it publishes due retries and re-drives abandoned events.
    sweep_seconds: float = Field(5.0, alias="PAYWORKER_SWEEP_SECONDS", gt=0)
    # Redis redelivers an unacked message after this. No message of ours carries a
    # countdown, so it only has to outlast one task run.
    visibility_timeout: int = Field(300, alias="PAYWORKER_VISIBILITY_TIMEOUT", ge=10)

    # Secret that seals card tokens kept for re-driving; defaults to the Stripe key.
    seal_key: SecretStr | None = Field(None, alias="PAYWORKER_SEAL_KEY")

    @field_validator("database_url")
    @classmethod
    def _use_psycopg3(cls, url: str) -> str:
        for prefix in ("postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        return url

    @model_validator(mode="after")
    def _check_timings(self) -> Settings:
        if self.retry_backoff_base > self.retry_backoff_max:
            raise ValueError("PAYWORKER_RETRY_BACKOFF_BASE exceeds PAYWORKER_RETRY_BACKOFF_MAX")
        return self

    @property
    def is_redis(self) -> bool:
        return self.broker_url.startswith(("redis://", "rediss://", "redis+socket://"))

    @property
    def task_time_limit(self) -> int:
        """Hard limit of one task run: the lease, so a live run never outlasts its claim."""
        return self.lease_seconds

    @property
    def task_soft_time_limit(self) -> int:
        """Soft limit, leaving time to record the outcome before the hard kill."""
        return max(1, self.lease_seconds - max(1, min(15, self.lease_seconds // 5)))

    @property
    def stripe_call_timeout(self) -> float:
        """The HTTP timeout actually used: short enough that a call and the SDK's retries
        of it end before the soft time limit."""
        budget = (self.task_soft_time_limit - 0.5) / (self.stripe_network_retries + 1)
        return max(0.5, min(self.stripe_timeout, budget))

    @property
    def redrive_after_seconds(self) -> float:
        """How long a re-driven event may wait for its message before the next re-drive."""
        return float(self.lease_seconds)

    @property
    def seal_secret(self) -> str | None:
        secret = self.seal_key or self.stripe_api_key
        return secret.get_secret_value() if secret is not None else None

    def unsafe_reasons(self) -> list[str]:
        """Why this configuration could lose or double a message; empty when safe."""
        reasons = []
        longest_hold = self.task_time_limit + MAX_DB_DOWN_PAUSE
        if self.is_redis and self.visibility_timeout <= longest_hold:
            reasons.append(
                f"PAYWORKER_VISIBILITY_TIMEOUT={self.visibility_timeout}s must exceed the task"
                f" time limit ({self.task_time_limit}s, from PAYWORKER_LEASE_SECONDS) plus"
                f" {MAX_DB_DOWN_PAUSE:.0f}s: otherwise Redis redelivers a message still running"
            )
        if self.sweep_seconds >= self.lease_seconds:
            reasons.append(
                f"PAYWORKER_SWEEP_SECONDS={self.sweep_seconds} must be shorter than"
                f" PAYWORKER_LEASE_SECONDS={self.lease_seconds}"
            )
        return reasons


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
