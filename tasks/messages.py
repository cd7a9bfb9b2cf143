"""The five payment messages as typed values, validated at the edge."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
    field_validator,
)
from pydantic import ValidationError as _ValidationError

from core.errors import InvalidMessage
from core.redact import mask_token, redact

Identifier = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=200)]
Email = Annotated[
    str,
    StringConstraints(
        strict=True, strip_whitespace=True, max_length=320, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
    ),
]
Token = Annotated[
    str, StringConstraints(strict=True, max_length=255, pattern=r"^tok_[A-Za-z0-9_]+$")
]
CardId = Annotated[
    str, StringConstraints(strict=True, max_length=255, pattern=r"^card_[A-Za-z0-9_]+$")
]
Currency = Annotated[str, StringConstraints(strict=True, pattern=r"^[A-Za-z]{3}$", to_lower=True)]
# Stripe's metadata limits: 50 keys, keys up to 40 characters, values up to 500.
# Two keys are ours (event_id, user_id), so upstream apps get 48.
MetaKey = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=40)]
MetaValue = Annotated[str, StringConstraints(strict=True, max_length=500)]
Metadata = Annotated[dict[MetaKey, MetaValue], Field(max_length=48)]
RESERVED_METADATA_KEYS = frozenset({"event_id", "user_id"})


class Message(BaseModel):
    """Fields every message carries: the idempotency key and the upstream user."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    event_id: Identifier
    user_id: Identifier

    def fingerprint(self) -> str:
        """sha256 of the canonical message: equal for a redelivery, different for a conflict."""
        body = {"type": type(self).__name__, **self.model_dump(mode="json")}
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def stored_payload(self) -> dict[str, Any]:
        """What the ledger keeps: everything but secrets."""
        return self.model_dump(mode="json")

    def stripe_metadata(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """Metadata for every Stripe object this message creates: traceable to the event."""
        return {**(extra or {}), "event_id": self.event_id, "user_id": self.user_id}


def _check_reserved(cls: type[Message], metadata: dict[str, str] | None) -> dict[str, str] | None:
    clash = RESERVED_METADATA_KEYS & set(metadata or {})
    if clash:
        raise ValueError(f"keys {sorted(clash)} are reserved for payworker")
    return metadata


class UserRegistered(Message):
    email: Email
    name: Annotated[str, StringConstraints(strict=True, max_length=500)] | None = None
    metadata: Metadata | None = None

    _reserved = field_validator("metadata")(_check_reserved)


class CardTokenReceived(Message):
    token: Token
    make_default: StrictBool = False

    def stored_payload(self) -> dict[str, Any]:
        return {**super().stored_payload(), "token": mask_token(self.token)}


class DefaultCardChanged(Message):
    card_id: CardId


class CardRemoved(Message):
    card_id: CardId


class ChargeRequested(Message):
    amount: StrictInt
    currency: Currency
    card_id: CardId | None = None
    description: Annotated[str, StringConstraints(strict=True, max_length=1000)] | None = None
    metadata: Metadata | None = None

    _reserved = field_validator("metadata")(_check_reserved)


MESSAGE_TYPES: dict[str, type[Message]] = {
    "user_registered": UserRegistered,
    "card_token_received": CardTokenReceived,
    "default_card_changed": DefaultCardChanged,
    "card_removed": CardRemoved,
    "charge_requested": ChargeRequested,
}


def parse_message(message_type: str, kwargs: dict[str, Any]) -> Message:
    """Validate raw keyword arguments into the message of `message_type`.

    Raises:
        InvalidMessage: with every problem listed, secrets masked.
    """
    model = MESSAGE_TYPES[message_type]
    if _has_nul(kwargs):
        raise InvalidMessage("NUL characters are not allowed in any field")
    try:
        return model.model_validate(kwargs)
    except (_ValidationError, ValueError) as exc:
        raise InvalidMessage(_describe(exc)) from None


def _has_nul(value: Any, depth: int = 0) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if depth > 8:
        return False
    if isinstance(value, dict):
        return any(_has_nul(k, depth + 1) or _has_nul(v, depth + 1) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(v, depth + 1) for v in value)
    return False


def _describe(exc: Exception) -> str:
    if isinstance(exc, _ValidationError):
        problems = []
        for error in exc.errors(include_input=False, include_url=False):
            where = ".".join(str(part) for part in error["loc"]) or "message"
            problems.append(f"{where}: {error['msg']}")
        return redact("; ".join(problems))
    return redact(str(exc))
