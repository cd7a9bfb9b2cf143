"""Every error payworker raises on purpose, and what each one means for its event.

An error's `disposition` is the whole retry policy: the runner (tasks/runner.py) looks it
up once and never branches on classes. Exceptions of other libraries (DBAPI, Celery's time
limit, a bug's own exception) become one of ours in `translate`; the Stripe SDK's errors
become ours in the gateway's one table (tasks/gateway.py), the only importer of `stripe`."""

from __future__ import annotations

import enum
import re
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError

# An error text kept in the ledger (`error_message`, `last_error`) or written in a log line
# is cut to this many bytes of UTF-8: a message with 2,000 unknown kwargs, or a library's
# error quoting a whole request, must not put megabytes into a row or a log shipper.
MAX_ERROR_TEXT = 4096


class Disposition(enum.Enum):
    """What happens to an event whose run ended with an error."""

    # A final business outcome: the event fails with the error's code, never retried.
    FAIL = "fail"
    # Might work later: retried with backoff, each one spending the retry budget; then dead.
    RETRY = "retry"
    # Nothing happened on Stripe's side (our own limiter said "not now") or a prerequisite
    # has not arrived yet: retried later without spending the budget.
    WAIT = "wait"
    # Stripe refuses our credentials: the event waits (no budget spent) and we shout.
    CONFIGURATION = "configuration"
    # Our lease ran out and another delivery owns the event: write nothing, stop.
    STOP = "stop"
    # The message itself is refused before it has a run (an idempotency conflict).
    REJECT = "reject"


class PayworkerError(Exception):
    """Root of every error payworker raises on purpose."""

    code: str = "internal_error"
    disposition: Disposition = Disposition.RETRY

    def __init__(self, message: str, *, code: str | None = None, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.context = context

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


# ---- final business outcomes ---------------------------------------------------------


class PermanentError(PayworkerError):
    """A final business outcome: the event fails with `code` and is never retried."""

    disposition = Disposition.FAIL


class InvalidMessage(PermanentError):
    """The message breaks the contract. `stored_payload`, when given, is what the ledger
    keeps of it instead of its sanitised kwargs (refused free text replaced, an oversized
    message summarised)."""

    code = "invalid_message"

    def __init__(
        self, message: str, *, stored_payload: dict[str, Any] | None = None, **context: Any
    ) -> None:
        super().__init__(message, **context)
        self.stored_payload = stored_payload


class CardDeclined(PermanentError):
    """Stripe declined the card; `decline_code` says why when Stripe tells. `charge_id` is
    the failed charge and `payment_intent_id` its PaymentIntent, when Stripe names them."""

    code = "card_declined"

    def __init__(
        self,
        message: str,
        *,
        decline_code: str | None,
        failure_code: str | None,
        charge_id: str | None = None,
        request_id: str | None = None,
        payment_intent_id: str | None = None,
    ) -> None:
        super().__init__(message, request_id=request_id)
        self.decline_code = decline_code
        self.failure_code = failure_code
        self.charge_id = charge_id
        self.payment_intent_id = payment_intent_id


class StripeInvalidRequest(PermanentError):
    """Stripe rejected the request as invalid; repeating it cannot help."""

    code = "stripe_invalid_request"


class StripeNotFound(StripeInvalidRequest):
    """The Stripe object does not exist (any more)."""


# ---- waits that spend nothing ----------------------------------------------------------


class PrerequisiteMissing(PayworkerError):
    """The customer or card this message needs has not been processed yet: wait (for at
    most PAYWORKER_PREREQUISITE_WAIT_SECONDS from the event's receipt), then fail."""

    disposition = Disposition.WAIT


class RateLimitedLocally(PayworkerError):
    """No Stripe slot within the allowed wait: Stripe did nothing, so the event is retried
    through the ledger without spending its budget."""

    code = "stripe_rate_limited_locally"
    disposition = Disposition.WAIT


# ---- retries that count ------------------------------------------------------------------


class TransientError(PayworkerError):
    """Might work later (network, timeout, 429, 409, 5xx, database): retry with backoff."""

    code = "transient"


class OutcomeUnknown(TransientError):
    """The request may have reached Stripe; the retry must repeat it with the same key."""

    code = "stripe_outcome_unknown"


class RunOutOfTime(TransientError):
    """The task run has no time left for another Stripe request (see set_run_deadline)."""

    code = "run_time_limit"


class _Foreign(TransientError):
    """Another library's exception, translated; shown as `<its class>: <its text>`."""

    def __str__(self) -> str:
        return self.message


class DatabaseUnavailable(_Foreign):
    """Postgres refused or lost a statement (connection, lock timeout, serialization)."""

    code = "database"


class TimeLimitReached(_Foreign):
    """Celery's soft time limit interrupted the run."""

    code = "time_limit"


class InternalError(_Foreign):
    """A bug or an unforeseen error: retried within the budget, then dead for a human."""

    code = "internal_error"


# ---- configuration, leases, conflicts ------------------------------------------------------


class ConfigurationFault(PayworkerError):
    """Stripe refused our API key (or there is none): an operator must fix the
    configuration. The event waits; it does not spend its retry budget."""

    code = "stripe_configuration"
    disposition = Disposition.CONFIGURATION


class LeaseLost(PayworkerError):
    """Our lease expired and another worker took the event over: stop without writing."""

    code = "lease_lost"
    disposition = Disposition.STOP


class IdempotencyConflict(PayworkerError):
    """The same event_id arrived with a different payload; the first one stands."""

    code = "idempotency_conflict"
    disposition = Disposition.REJECT


class MessageRefused(PayworkerError):
    """The message is not authenticated (PAYWORKER_MESSAGE_KEYS is set and its signature
    is missing or wrong): it is dropped before it is parsed or claimed, and only counted.
    The text names the reason and never the payload."""

    code = "unauthenticated_message"
    disposition = Disposition.REJECT


# ---- refusals at start-up (not event outcomes) ---------------------------------------------


class UnsafeConfiguration(SystemExit):
    """The worker would lose or double messages with this configuration. A SystemExit,
    because Celery logs and swallows ordinary exceptions raised by signal handlers."""


class FlowerRefused(RuntimeError):
    """Flower would start with a configuration that exposes payment traffic."""


def clip(text: str, limit: int = MAX_ERROR_TEXT, *, keep_end: bool = False) -> str:
    """`text` cut to at most `limit` bytes of UTF-8, saying how long it was; `keep_end`
    keeps its end instead of its start (a traceback's last lines name the error)."""
    if len(text) * 4 <= limit:  # no character takes more than 4 bytes
        return text
    encoded = text.encode("utf-8", "replace")
    if len(encoded) <= limit:
        return text
    room = limit - len(f"… [cut: {len(encoded)} bytes]".encode())
    if keep_end:
        return f"[cut: {len(encoded)} bytes] …" + encoded[-room:].decode("utf-8", "ignore")
    return encoded[:room].decode("utf-8", "ignore") + f"… [cut: {len(encoded)} bytes]"


# A quoted string in a Postgres message: a value, or a name repeated in the diagnostics.
_QUOTED = re.compile(r'"[^"]*"|\'[^\']*\'')


def database_error_text(exc: DBAPIError) -> str:
    """What a database error says, without the data. hide_parameters keeps the bound values
    out of SQLAlchemy's text, but Postgres quotes values itself (`invalid input syntax for
    type integer: "…"`, DETAIL `Failing row contains (…)` or `Key (user_id)=(…)`, CONTEXT
    `JSON data, line 1: …`). Kept: the classes, the SQLSTATE, the primary message with its
    quoted parts elided, and the table, column and constraint names."""
    orig = exc.orig
    diag = getattr(orig, "diag", None)
    sqlstate = getattr(orig, "sqlstate", None)
    if diag is None or not sqlstate:
        # Not an answer of the server (connection refused or lost): the client's own words.
        first = str(orig).strip().splitlines()
        return f"{type(exc).__name__}: {first[0] if first else type(orig).__name__}"
    primary = _QUOTED.sub('"…"', str(diag.message_primary or ""))
    names = [
        f"{label} {value}"
        for label, value in (
            ("table", diag.table_name),
            ("column", diag.column_name),
            ("constraint", diag.constraint_name),
        )
        if value
    ]
    where = f" ({', '.join(names)})" if names else ""
    return f"{type(exc).__name__}: {type(orig).__name__} [{sqlstate}]: {primary}{where}"


def translate(exc: BaseException) -> PayworkerError:
    """The one boundary for other libraries' exceptions: each becomes one of ours."""
    if isinstance(exc, PayworkerError):
        return exc
    if isinstance(exc, DataError):
        # Postgres refuses the values themselves: retrying cannot help.
        return InvalidMessage(
            f"the message holds values Postgres cannot store: {database_error_text(exc)}"
        )
    if isinstance(exc, IntegrityError):
        # A constraint refused a write the code believed safe: a broken invariant, not an
        # outage. Retried within the budget (a race may have passed), then dead for a human.
        return InternalError(f"internal_error: {database_error_text(exc)}")
    if isinstance(exc, DBAPIError):
        return DatabaseUnavailable(database_error_text(exc))
    if isinstance(exc, SoftTimeLimitExceeded):
        return TimeLimitReached(f"{type(exc).__name__}: {exc}")
    return InternalError(f"internal_error: {type(exc).__name__}: {exc}")
