"""The one place that reads the environment."""

from __future__ import annotations

import os
import re
import tempfile
from functools import cached_property, lru_cache
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from core.signing import KeyRing

DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres:postgres@127.0.0.1:5432/payworker"
# Stripe forgets an idempotency key 24 hours after its first use; we stop trusting a key
# an hour earlier and look for the object by its metadata instead.
DEFAULT_KEY_WINDOW = 23 * 3600
# While Postgres is unreachable a message waits in the worker at most this long before it
# goes back to the broker (it cannot be scheduled in a ledger it cannot reach).
MAX_DB_DOWN_PAUSE = 10.0
# Stripe's published request limits per account (requests/s), and the share of them we
# use by default: other clients of the same account (the web app, the dashboard) count too.
STRIPE_TEST_RATE = 25.0
STRIPE_LIVE_RATE = 100.0
DEFAULT_RATE_HEADROOM = 0.9
# PAYWORKER_USER_CHARGE_LIMIT counts a user's charges over this rolling window.
USER_CHARGE_WINDOW_SECONDS = 3600
# Stripe's own ceiling on an amount (eight digits of minor units).
STRIPE_MAX_AMOUNT = 99_999_999
_MAX_AMOUNT_ITEM = re.compile(r"([A-Za-z]{3})\s*:\s*([0-9]+)")
# Stripe keys that move real money.
LIVE_KEY_PREFIXES = ("sk_live_", "rk_live_")
# The sealing key is an HKDF input: 32 characters of `secrets.token_urlsafe(32)` carry
# 192 bits, more than enough; fewer suggests a password typed by hand.
MIN_SEAL_KEY_LENGTH = 32


class Settings(BaseSettings):
    """Every knob of payworker, read from the environment once per process."""

    # hide_input_in_errors: a refused setting's error names the variable, never echoes the
    # environment (which holds STRIPE_API_KEY and DATABASE_URL's password).
    model_config = SettingsConfigDict(
        env_prefix="", case_sensitive=False, extra="ignore", hide_input_in_errors=True
    )

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
    # -- the modern Stripe path (PaymentIntents) --
    # How charge_requested charges: "payment_intents" (one PaymentIntent created and
    # confirmed off-session; 3-D Secure possible) or "charges" (the legacy Charges API).
    # An event keeps the API it started with, whatever this says when it resumes.
    charge_api: Literal["payment_intents", "charges"] = Field(
        "payment_intents", alias="PAYWORKER_CHARGE_API"
    )
    # An event waiting for its customer (action_required) or for Stripe (processing) is
    # read again from Stripe this often by the sweep.
    action_poll_seconds: float = Field(60.0, alias="PAYWORKER_ACTION_POLL_SECONDS", gt=0)
    # A PaymentIntent still waiting for its customer this long after it was created is
    # canceled and its event fails with authentication_required. Stripe lets the customer
    # authenticate for longer; 23 hours keeps the cancel inside the idempotency window.
    action_expiry_hours: float = Field(23.0, alias="PAYWORKER_ACTION_EXPIRY_HOURS", gt=0)
    # -- periodic duties (the sweep, the token expiry): one worker per queue leads them --
    # A card token kept sealed for a re-drive is erased this long after its event was first
    # received, whatever the event's status: a dead card event older than this cannot be
    # replayed at a point that needs the token.
    sealed_token_ttl_hours: float = Field(72.0, alias="PAYWORKER_SEALED_TOKEN_TTL_HOURS", gt=0)
    # Redis redelivers an unacked message after this. No message of ours carries a
    # countdown, so it only has to outlast one task run.
    visibility_timeout: int = Field(300, alias="PAYWORKER_VISIBILITY_TIMEOUT", ge=10)

    # Log lines: "json" (one JSON object per line), "console" (readable key=value), or
    # "auto": console on a terminal, JSON otherwise.
    log_format: Literal["auto", "json", "console"] = Field("auto", alias="PAYWORKER_LOG_FORMAT")

    # Worker processes write their counters here (prometheus_client's multiprocess mode) and
    # `payworker metrics` serves them; `payworker worker` creates it under the temp dir when
    # unset. Its name is prometheus_client's own, which reads it at import.
    metrics_dir: str | None = Field(None, alias="PROMETHEUS_MULTIPROC_DIR")
    metrics_port: int = Field(9808, alias="PAYWORKER_METRICS_PORT", ge=1, le=65535)
    metrics_address: str = Field("127.0.0.1", alias="PAYWORKER_METRICS_ADDRESS")

    # --- Token sealing keys (tasks/sealing.py) ---
    # Secrets that seal card tokens kept for re-driving, comma-separated: the first seals,
    # every one opens (rotation: put the new one first, keep the old ones until the tokens
    # they sealed are gone). Required with a live Stripe key, so that rotating a leaked
    # Stripe key never makes sealed tokens unreadable. Precedence: PAYWORKER_SEAL_KEYS, else
    # PAYWORKER_SEAL_KEY (one secret), else the Stripe key itself (test keys only).
    seal_keys: SecretStr | None = Field(None, alias="PAYWORKER_SEAL_KEYS")
    # The single secret of earlier releases; still honoured when PAYWORKER_SEAL_KEYS is unset.
    seal_key: SecretStr | None = Field(None, alias="PAYWORKER_SEAL_KEY")

    # `payworker flower`: HTTP basic auth as "user:password" (several: "u1:p1,u2:p2"),
    # checked when Flower starts (worker/flower.py), so a typo here never stops a worker.
    # The name is Flower's own: a plain `celery flower` reads the same variable.
    flower_basic_auth: SecretStr | None = Field(None, alias="FLOWER_BASIC_AUTH")
    flower_port: int = Field(5555, alias="PAYWORKER_FLOWER_PORT", ge=1, le=65535)
    # Loopback by default: Flower shows payment traffic, so exposing it is a choice.
    flower_address: str = Field("127.0.0.1", alias="PAYWORKER_FLOWER_ADDRESS")
    # Where Flower keeps its task history between restarts (a dbm/shelve file).
    flower_db: str = Field("flower.db", alias="PAYWORKER_FLOWER_DB", min_length=1)
    flower_save_seconds: float = Field(60.0, alias="PAYWORKER_FLOWER_SAVE_SECONDS", gt=0)

    # The most Stripe requests all workers together may send in any one-second window.
    # Unset: 90% of Stripe's limit for the key's mode (see `stripe_rate_limit`).
    stripe_rate: float | None = Field(None, alias="PAYWORKER_STRIPE_RATE", gt=0)
    # Requests that may leave back to back after a quiet spell; each one of burst costs one
    # request/s of sustained rate, so the window bound above still holds.
    stripe_burst: int = Field(1, alias="PAYWORKER_STRIPE_BURST", ge=1, le=20)
    # Where the shared limiter keeps its state; defaults to the broker when it is Redis.
    rate_limit_redis_url: str | None = Field(None, alias="PAYWORKER_RATE_LIMIT_REDIS_URL")
    # The longest one Stripe request waits for its slot; beyond it the event is retried
    # through the ledger instead of holding a worker thread. Waiting threads queue for about
    # (threads of all workers) / rate seconds: 2 workers x 48 threads at 22.5/s is ~4.5 s.
    rate_limit_max_wait: float = Field(10.0, alias="PAYWORKER_RATE_LIMIT_MAX_WAIT", gt=0)
    # After a 429 from Stripe every worker sends at half the rate for this long (a second
    # 429 within it halves again, down to an eighth).
    rate_limit_penalty_seconds: float = Field(
        10.0, alias="PAYWORKER_STRIPE_429_PENALTY_SECONDS", gt=0
    )

    # Execution model (celeryconfig's defaults). Stripe-bound work waits on the network, so
    # a thread pool runs many tasks per process; see docs/performance.md.
    pool: Literal["threads", "prefork", "gevent", "solo"] = Field("threads", alias="PAYWORKER_POOL")
    concurrency: int = Field(48, alias="PAYWORKER_CONCURRENCY", ge=1, le=512)
    # Database connections per worker process; unset: one per concurrent task (at most 16)
    # plus two. Every worker process has its own pool: keep their sum below Postgres'
    # max_connections.
    db_pool_size: int | None = Field(None, alias="PAYWORKER_DB_POOL_SIZE", ge=1)

    # ---- input limits (what a message may be, what a charge may do) ----------------------
    # The largest message (its kwargs as JSON, in bytes) read at all; a larger one is
    # refused as invalid_message before it is parsed.
    max_message_bytes: int = Field(65536, alias="PAYWORKER_MAX_MESSAGE_BYTES", ge=1024)
    # The largest charge per currency, in minor units ("usd:50000,eur:50000"); a currency
    # not listed has no limit of ours. Unset or empty: no limit.
    max_amount: Annotated[dict[str, int], NoDecode] = Field(
        default_factory=dict, alias="PAYWORKER_MAX_AMOUNT"
    )
    # The most charges (pending or succeeded) one user may have in a rolling hour; unset
    # or empty: no limit.
    user_charge_limit: int | None = Field(None, alias="PAYWORKER_USER_CHARGE_LIMIT", ge=1)

    @field_validator("max_amount", mode="before")
    @classmethod
    def _parse_max_amount(cls, value: Any) -> Any:
        if isinstance(value, dict):  # given as an argument: checked as the variable is
            value = ",".join(f"{currency}:{amount}" for currency, amount in value.items())
        if not isinstance(value, str):
            return value
        limits: dict[str, int] = {}
        for item in filter(None, (part.strip() for part in value.split(","))):
            match = _MAX_AMOUNT_ITEM.fullmatch(item)
            if match is None:
                raise ValueError(
                    "PAYWORKER_MAX_AMOUNT must be currency:amount pairs separated by commas,"
                    f" amounts in minor units, e.g. usd:50000,eur:50000; got the item {item!r}"
                )
            currency, amount = match.group(1).lower(), int(match.group(2))
            if currency in limits:
                raise ValueError(f"PAYWORKER_MAX_AMOUNT names {currency} twice")
            if not 0 < amount <= STRIPE_MAX_AMOUNT:
                raise ValueError(
                    f"PAYWORKER_MAX_AMOUNT for {currency} must be 1 to {STRIPE_MAX_AMOUNT}"
                    f" (minor units), got {amount}"
                )
            limits[currency] = amount
        return limits

    @field_validator("user_charge_limit", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _live_key_goes_to_stripe_only(self) -> Settings:
        # A live key sent to another host is a leaked key: STRIPE_API_BASE is for a local
        # fake or a test proxy, and only ever with a test key.
        key = self.stripe_api_key.get_secret_value() if self.stripe_api_key else ""
        if self.stripe_api_base and key.startswith(("sk_live_", "rk_live_")):
            raise ValueError(
                "STRIPE_API_BASE is set while STRIPE_API_KEY is a live key: a live key is only"
                " ever sent to Stripe itself. Unset STRIPE_API_BASE, or use a test key"
            )
        return self

    # ---- end of input limits ----------------------------------------------------------------

    # ---- authenticated messages (core/signing.py) ----
    # `key_id:secret[,key_id:secret…]`: the first key signs what payworker publishes, every
    # key verifies. Set, a message without a valid signature is never run. Unset, any
    # client of the broker can make payworker act (the worker warns at start).
    message_keys: SecretStr | None = Field(None, alias="PAYWORKER_MESSAGE_KEYS")

    @model_validator(mode="after")
    def _check_message_keys(self) -> Settings:
        self.message_keyring  # noqa: B018  (parsed here: a bad value stops every process)
        return self

    @cached_property
    def message_keyring(self) -> KeyRing | None:
        """The parsed PAYWORKER_MESSAGE_KEYS; None when unset or blank.

        Raises:
            KeyConfigError: a malformed value (a ValueError: Settings() refuses it).
        """
        secret = self.message_keys
        return KeyRing.parse(secret.get_secret_value() if secret is not None else None)

    # ---- end of authenticated messages ----

    @field_validator("database_url")
    @classmethod
    def _use_psycopg3(cls, url: str) -> str:
        for prefix in ("postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        return url

    @field_validator("seal_keys", "seal_key", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        # docker-compose's `${PAYWORKER_SEAL_KEYS:-}` passes an empty string for "unset".
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _check_timings(self) -> Settings:
        if self.retry_backoff_base > self.retry_backoff_max:
            raise ValueError("PAYWORKER_RETRY_BACKOFF_BASE exceeds PAYWORKER_RETRY_BACKOFF_MAX")
        return self

    @model_validator(mode="after")
    def _check_rate_limit(self) -> Settings:
        if self.stripe_rate_limit <= self.stripe_burst:
            raise ValueError("PAYWORKER_STRIPE_RATE must exceed PAYWORKER_STRIPE_BURST")
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
    def stripe_rate_limit(self) -> float:
        """Requests/s all workers may send: PAYWORKER_STRIPE_RATE, else 90% of Stripe's limit
        for the key's mode (live keys 100/s, test keys and no key 25/s)."""
        if self.stripe_rate is not None:
            return self.stripe_rate
        live = self.stripe_key_is_live
        return (STRIPE_LIVE_RATE if live else STRIPE_TEST_RATE) * DEFAULT_RATE_HEADROOM

    @property
    def stripe_key_is_live(self) -> bool:
        """True for a live-mode secret or restricted key (real money)."""
        key = self.stripe_api_key.get_secret_value() if self.stripe_api_key else ""
        return key.startswith(LIVE_KEY_PREFIXES)

    @property
    def rate_limit_redis(self) -> str | None:
        """The Redis that holds the shared limiter, or None (per-process limiting only)."""
        if self.rate_limit_redis_url:
            return self.rate_limit_redis_url
        return self.broker_url if self.is_redis else None

    @property
    def rate_limit_wait_cap(self) -> float:
        """The longest wait for a Stripe slot: the setting, but never more than a quarter of
        the soft time limit, so a run with several calls still ends in time."""
        return min(self.rate_limit_max_wait, self.task_soft_time_limit / 4)

    @property
    def redrive_after_seconds(self) -> float:
        """How long a re-driven event may wait for its message before the next re-drive."""
        return float(self.lease_seconds)

    def duty_stale_after(self, period: float) -> float:
        """A periodic duty that has not run for this long has no working leader: three of
        its periods, plus a lease (a vanished leader's session ends within one)."""
        return 3 * period + self.lease_seconds

    @property
    def metrics_path(self) -> str:
        """Where worker processes of this queue keep their metric files."""
        return self.metrics_dir or os.path.join(
            tempfile.gettempdir(), f"payworker-metrics-{self.queue}"
        )

    @property
    def seal_secrets(self) -> list[str]:
        """The secrets that seal card tokens, the sealing one first: PAYWORKER_SEAL_KEYS, else
        PAYWORKER_SEAL_KEY, else the Stripe key; empty when none is set. Whether they may be
        used is `seal_key_problems`' question."""
        if self.seal_keys is not None:
            listed = self.seal_keys.get_secret_value().split(",")
            return [secret.strip() for secret in listed if secret.strip()]
        secret = self.seal_key or self.stripe_api_key
        return [secret.get_secret_value()] if secret is not None else []

    def seal_key_problems(self) -> list[str]:
        """Why the sealing keys must not be used; empty when they may."""
        if self.seal_keys is None:
            if self.stripe_key_is_live:
                return [
                    "PAYWORKER_SEAL_KEYS is not set: a live Stripe key needs sealing keys of its"
                    " own (see docs/operations.md, Production checklist); list the old"
                    " PAYWORKER_SEAL_KEY or Stripe key after the new one so that tokens sealed"
                    " before still open"
                ]
            return []
        secrets = self.seal_secrets
        if not secrets:
            return ["PAYWORKER_SEAL_KEYS is set but lists no key"]
        problems = []
        if len(secrets[0]) < MIN_SEAL_KEY_LENGTH:
            problems.append(
                f"the first key of PAYWORKER_SEAL_KEYS (the one that seals) has"
                f" {len(secrets[0])} characters, fewer than {MIN_SEAL_KEY_LENGTH}: generate one"
                " with `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`"
            )
        api_key = self.stripe_api_key.get_secret_value() if self.stripe_api_key else None
        if api_key is not None and secrets[0] == api_key:
            problems.append(
                "the first key of PAYWORKER_SEAL_KEYS is the Stripe key: rotating that key"
                " would lose the sealed tokens; put a key of its own first"
            )
        return problems

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
