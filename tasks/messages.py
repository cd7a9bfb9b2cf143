"""The payment messages as typed values, validated at the edge."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Any, Literal

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
from core.redact import mask_token, scrub, secret_kind

# event_id and user_id: printable ASCII that every place an id goes takes as it is. An id
# goes into the Idempotency-Key header (latin-1 only: a non-latin-1 id could never be sent,
# its event would retry until dead), into log lines and terminals (no control characters,
# no bidi overrides), and into URLs and the CLI (no spaces).
ID_CHARACTERS = "A-Za-z0-9._:@/+=-"
# pydantic's patterns are Rust regexes: `$` is the end of the string (Python's would also
# match before a final newline, hence `fullmatch` in is_valid_id).
ID_PATTERN = f"^[{ID_CHARACTERS}]+$"
MAX_ID_LENGTH = 200
_ID = re.compile(f"[{ID_CHARACTERS}]+")
Identifier = Annotated[
    str,
    StringConstraints(strict=True, min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN),
]
Email = Annotated[
    str,
    StringConstraints(
        strict=True, strip_whitespace=True, max_length=320, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
    ),
]
Token = Annotated[
    str, StringConstraints(strict=True, max_length=255, pattern=r"^tok_[A-Za-z0-9_]+$")
]
PaymentMethodId = Annotated[
    str, StringConstraints(strict=True, max_length=255, pattern=r"^pm_[A-Za-z0-9_]+$")
]
# A user's card as the contract names it: a legacy card (`card_...`, attached from a token)
# or a PaymentMethod (`pm_...`).
CardId = Annotated[
    str, StringConstraints(strict=True, max_length=255, pattern=r"^(card|pm)_[A-Za-z0-9_]+$")
]
# Stripe's refund reasons (https://docs.stripe.com/api/refunds/create).
RefundReason = Literal["duplicate", "fraudulent", "requested_by_customer"]
Currency = Annotated[str, StringConstraints(strict=True, pattern=r"^[A-Za-z]{3}$", to_lower=True)]
# Stripe's metadata limits: 50 keys, keys up to 40 characters without square brackets
# (Stripe reads `a[b]` as nesting), values up to 500. Three keys are ours (event_id,
# user_id, and generation on what a forced replay's new generation creates), so upstream
# apps get 47.
MetaKey = Annotated[
    str, StringConstraints(strict=True, min_length=1, max_length=40, pattern=r"^[^\[\]]+$")
]
MetaValue = Annotated[str, StringConstraints(strict=True, max_length=500)]
GENERATION_METADATA_KEY = "generation"
RESERVED_METADATA_KEYS = frozenset({"event_id", "user_id", GENERATION_METADATA_KEY})
STRIPE_METADATA_KEYS = 50
Metadata = Annotated[
    dict[MetaKey, MetaValue], Field(max_length=STRIPE_METADATA_KEYS - len(RESERVED_METADATA_KEYS))
]


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


def is_valid_id(value: str) -> bool:
    """True when `value` is an event_id or user_id as the contract allows."""
    return len(value) <= MAX_ID_LENGTH and _ID.fullmatch(value) is not None


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


class PaymentMethodReceived(Message):
    payment_method: PaymentMethodId
    make_default: StrictBool = False


class SetupRequested(Message):
    usage: Literal["off_session", "on_session"] = "off_session"


class RefundRequested(Message):
    # The event_id of the charge_requested whose charge is refunded.
    charge_event_id: Identifier
    # Minor units; absent: whatever of the charge is not refunded yet.
    amount: StrictInt | None = Field(None, gt=0)
    reason: RefundReason | None = None
    metadata: Metadata | None = None

    _reserved = field_validator("metadata")(_check_reserved)


MESSAGE_TYPES: dict[str, type[Message]] = {
    "user_registered": UserRegistered,
    "card_token_received": CardTokenReceived,
    "default_card_changed": DefaultCardChanged,
    "card_removed": CardRemoved,
    "charge_requested": ChargeRequested,
    "payment_method_received": PaymentMethodReceived,
    "setup_requested": SetupRequested,
    "refund_requested": RefundRequested,
}


# Free text of a message goes to Stripe (description, metadata, a customer's name), where
# the dashboard shows it to everyone, and into the ledger: it must hold no card number (PCI
# DSS) and no Stripe secret. Metadata keys and values are free text too.
FREE_TEXT_FIELDS = ("name", "description")
# Free text is screened on this many characters at most: no field takes more (a longer one
# is invalid for its length anyway), and the ledger keeps less of it (core.redact.sanitize).
_SCREEN_CHARS = 2000
# An invalid message's error lists this many problems at most, each located in at most
# MAX_LOCATION characters: 2,000 unknown kwargs make one short error, not two megabytes.
MAX_PROBLEMS = 20
MAX_LOCATION = 80


def check_size(kwargs: Any, limit: int) -> None:
    """Refuse a message whose kwargs take more than `limit` bytes as JSON, before anything
    else reads them (PAYWORKER_MAX_MESSAGE_BYTES).

    Raises:
        InvalidMessage: naming the size, never the content; the ledger keeps a summary.
    """
    body = json.dumps(kwargs, ensure_ascii=False, separators=(",", ":"), default=repr)
    size = len(body.encode("utf-8", "replace"))
    if size > limit:
        problem = f"the message is {size} bytes of JSON, over the limit of {limit} bytes"
        raise InvalidMessage(
            f"message: {problem} (PAYWORKER_MAX_MESSAGE_BYTES)",
            stored_payload={"refused": f"{problem}; not stored"},
        )


def parse_message(message_type: str, kwargs: dict[str, Any]) -> Message:
    """Validate raw keyword arguments into the message of `message_type`.

    Raises:
        InvalidMessage: with every problem listed (the first MAX_PROBLEMS), secrets masked,
            and refused free text replaced in its `stored_payload`.
    """
    model = MESSAGE_TYPES[message_type]
    checked, stored, problems = _screen(kwargs)
    refused = bool(problems)
    if _has_nul(kwargs):
        problems.append("NUL characters are not allowed in any field")
    try:
        message = model.model_validate(checked)
    except ValueError as exc:  # pydantic's ValidationError, or a validator's own
        problems.extend(_problems(exc))
    if problems:
        raise InvalidMessage(_listed(problems), stored_payload=stored if refused else None)
    return message


def _screen(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """Look for card numbers and Stripe secrets in the free text. Returns the kwargs to
    validate (refused text emptied, so the other problems are still found), the kwargs the
    ledger may keep (refused text replaced by `[refused: <what>]`), and the refusals."""
    checked, stored, refusals = dict(kwargs), dict(kwargs), []
    for name in FREE_TEXT_FIELDS:
        kind = _secret_in(kwargs.get(name))
        if kind:
            refusals.append(f"{name}: refused: it holds a {kind}")
            checked[name], stored[name] = "", f"[refused: {kind}]"
    metadata = kwargs.get("metadata")
    if isinstance(metadata, dict):
        checked_meta, stored_meta = {}, {}
        for number, (key, value) in enumerate(metadata.items(), 1):
            key_kind, value_kind = _secret_in(key), _secret_in(value)
            where = f"metadata key #{number}" if key_kind else f"metadata.{_location(key)}"
            if key_kind:
                refusals.append(f"{where}: refused: it holds a {key_kind}")
                key = f"[refused key #{number}: {key_kind}]"
            else:
                checked_meta[key] = "" if value_kind else value
            if value_kind:
                refusals.append(f"{where}: refused: the value holds a {value_kind}")
                value = f"[refused: {value_kind}]"
            stored_meta[key] = value
        if refusals:
            checked["metadata"], stored["metadata"] = checked_meta, stored_meta
    return checked, stored, refusals


def _secret_in(value: Any) -> str | None:
    return secret_kind(value[:_SCREEN_CHARS]) if isinstance(value, str) else None


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


def _location(value: Any) -> str:
    """A problem's location as an error may show it: what looks like a secret masked, cut."""
    text = scrub(str(value)[: MAX_LOCATION * 2])
    return text if len(text) <= MAX_LOCATION else text[:MAX_LOCATION] + "…"


def _problems(exc: ValueError) -> list[str]:
    if not isinstance(exc, _ValidationError):
        return [scrub(str(exc))]
    problems = []
    for error in exc.errors(include_input=False, include_url=False, include_context=False):
        where = ".".join(_location(part) for part in error["loc"]) or "message"
        problems.append(f"{where}: {scrub(error['msg'])}")
    return problems


def _listed(problems: list[str]) -> str:
    shown = "; ".join(problems[:MAX_PROBLEMS])
    hidden = len(problems) - MAX_PROBLEMS
    return f"{shown}; … and {hidden} more problems" if hidden > 0 else shown
