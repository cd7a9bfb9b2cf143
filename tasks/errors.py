"""One error root. A workflow raises these; the task layer turns them into an outcome."""

from __future__ import annotations

from typing import Any


class PayworkerError(Exception):
    """Root of every error payworker raises on purpose."""

    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.context = context

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class PermanentError(PayworkerError):
    """A final business outcome: the event fails with `code` and is never retried."""


class InvalidMessage(PermanentError):
    code = "invalid_message"


class CardDeclined(PermanentError):
    """Stripe declined the card; `decline_code` says why when Stripe tells."""

    code = "card_declined"

    def __init__(
        self,
        message: str,
        *,
        decline_code: str | None,
        failure_code: str | None,
        charge_id: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, request_id=request_id)
        self.decline_code = decline_code
        self.failure_code = failure_code
        self.charge_id = charge_id


class StripeInvalidRequest(PermanentError):
    """Stripe rejected the request as invalid; repeating it cannot help."""

    code = "stripe_invalid_request"


class StripeNotFound(StripeInvalidRequest):
    """The Stripe object does not exist (any more)."""


class PrerequisiteMissing(PayworkerError):
    """The customer or card this message needs has not been processed yet: wait, then fail."""


class TransientError(PayworkerError):
    """Might work later (network, timeout, 429, 409, 5xx, database): retry with backoff."""

    code = "transient"


class OutcomeUnknown(TransientError):
    """The request may have reached Stripe; the retry must repeat it with the same key."""

    code = "stripe_outcome_unknown"


class ConfigurationFault(TransientError):
    """Stripe refused our API key: an operator must fix the configuration. The event waits;
    it does not spend its retry budget."""

    code = "stripe_configuration"


class IdempotencyConflict(PayworkerError):
    """The same event_id arrived with a different payload; the first one stands."""

    code = "idempotency_conflict"
