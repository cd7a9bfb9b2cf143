"""The one place that reads the environment."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres:postgres@127.0.0.1:5432/payworker"


class Settings(BaseSettings):
    """Every knob of payworker, read from the environment once per process."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    database_url: str = Field(DEFAULT_DATABASE_URL, alias="DATABASE_URL")
    broker_url: str = Field("redis://127.0.0.1:6379/0", alias="CELERY_BROKER_URL")
    stripe_api_key: SecretStr | None = Field(None, alias="STRIPE_API_KEY")
    stripe_api_base: str | None = Field(None, alias="STRIPE_API_BASE")
    queue: str = Field("payments", alias="PAYWORKER_QUEUE", min_length=1)

    # Seconds one Stripe HTTP call may take before we treat its outcome as unknown.
    stripe_timeout: float = Field(30.0, alias="PAYWORKER_STRIPE_TIMEOUT", gt=0)
    # The SDK's own retries reuse our idempotency key, so they are safe; they smooth over
    # a dropped connection without a round trip through the broker.
    stripe_network_retries: int = Field(1, alias="PAYWORKER_STRIPE_NETWORK_RETRIES", ge=0, le=5)

    # How long an out-of-order message waits for its prerequisite (customer or card).
    prerequisite_wait_seconds: int = Field(900, alias="PAYWORKER_PREREQUISITE_WAIT_SECONDS", ge=0)
    # Transient failures tolerated per event before it is declared dead.
    max_attempts: int = Field(8, alias="PAYWORKER_MAX_ATTEMPTS", ge=1)
    retry_backoff_base: float = Field(2.0, alias="PAYWORKER_RETRY_BACKOFF_BASE", gt=0)
    # Longest retry countdown; by default a quarter of the visibility timeout (at most
    # 120 s), so a scheduled retry is never redelivered as a duplicate by Redis.
    retry_backoff_cap: float | None = Field(None, alias="PAYWORKER_RETRY_BACKOFF_MAX", gt=0)

    # A claimed event is ours for this long; a claim older than this means its worker died.
    lease_seconds: int = Field(180, alias="PAYWORKER_LEASE_SECONDS", ge=2)
    # Redis redelivers an unacked message after this; it must exceed every countdown plus
    # the task time limit, or a healthy message is delivered twice.
    visibility_timeout: int = Field(900, alias="PAYWORKER_VISIBILITY_TIMEOUT", ge=10)

    @field_validator("database_url")
    @classmethod
    def _use_psycopg3(cls, url: str) -> str:
        for prefix in ("postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        return url

    @property
    def retry_backoff_max(self) -> float:
        """The longest delay any retry is scheduled with."""
        if self.retry_backoff_cap is not None:
            return self.retry_backoff_cap
        return min(120.0, self.visibility_timeout / 4)

    @model_validator(mode="after")
    def _check_timings(self) -> Settings:
        if self.retry_backoff_base > self.retry_backoff_max:
            raise ValueError("PAYWORKER_RETRY_BACKOFF_BASE exceeds PAYWORKER_RETRY_BACKOFF_MAX")
        return self

    @property
    def max_countdown(self) -> float:
        """The longest countdown of any message we publish."""
        return self.retry_backoff_max

    @property
    def task_time_limit(self) -> int:
        """Hard limit of one task run: the lease, so a live run never outlasts its claim."""
        return self.lease_seconds

    @property
    def task_soft_time_limit(self) -> int:
        """Soft limit, leaving time to record the outcome before the hard kill."""
        return max(1, self.lease_seconds - max(1, min(15, self.lease_seconds // 5)))

    def unsafe_reasons(self) -> list[str]:
        """Why this configuration could lose or double a message; empty when safe."""
        reasons = []
        if self.visibility_timeout <= self.max_countdown + self.task_time_limit:
            reasons.append(
                f"PAYWORKER_VISIBILITY_TIMEOUT={self.visibility_timeout}s must exceed the longest"
                f" retry countdown ({self.max_countdown:.0f}s) plus the task time limit"
                f" ({self.task_time_limit}s): otherwise Redis redelivers messages still waiting"
            )
        return reasons


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
