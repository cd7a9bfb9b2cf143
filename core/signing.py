"""Authenticated messages: an HMAC-SHA256 over a message's task name and keyword arguments,
carried in one message header, checked against a ring of keys so that keys can be rotated.

The contract (docs/messages.md, "Authenticated messages"), which upstream apps implement
without any of our code:

- The signed bytes, the *canonical form*, are the ASCII JSON text of the object
  `{"kwargs": <the message's kwargs>, "task": <the task name>}` as
  `json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)`
  writes it: keys sorted at every level, no whitespace, every non-ASCII character escaped
  as \\uXXXX, NaN and infinities refused.
- The header `payworker-signature` holds `<key id>:<hex HMAC-SHA256 of those bytes>`, the
  HMAC keyed with the UTF-8 bytes of the key's secret.
- PAYWORKER_MESSAGE_KEYS is `key_id:secret[,key_id:secret…]`: the first key signs, every
  key verifies (rotation: add the new key behind the old one everywhere, then move it to
  the front, then drop the old one).

A signature authenticates what runs: the task and its kwargs. Positional arguments are not
covered, so a message that has any is refused. Delivery details (task id, countdown,
retries) are not covered: a copied signed message is a duplicate delivery of the same
event, which the ledger absorbs."""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SIGNATURE_HEADER = "payworker-signature"
# A secret shorter than this is refused at start: an HMAC key is only as strong as its
# secret, and 32 characters is what `secrets.token_hex(16)` gives.
MIN_SECRET_LENGTH = 32
_KEY_ID = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
_KEY_ID_RE = re.compile(_KEY_ID)
_SIGNATURE_RE = re.compile(rf"({_KEY_ID}):([0-9a-fA-F]{{64}})")


class Refusal(enum.StrEnum):
    """Why a message is not authenticated (the `reason` of logs, metrics and counts)."""

    UNSIGNED = "unsigned"  # no payworker-signature header
    MALFORMED = "malformed"  # the header is not `<key id>:<64 hex>`, or no canonical form
    UNKNOWN_KEY = "unknown_key"  # signed with a key id this process does not hold
    BAD_SIGNATURE = "bad_signature"  # forged, altered, or signed with another secret
    POSITIONAL_ARGS = "positional_args"  # arguments outside the signature


class KeyConfigError(ValueError):
    """PAYWORKER_MESSAGE_KEYS cannot be used; the message never quotes a secret."""


@dataclass(frozen=True)
class MessageKey:
    key_id: str
    secret: bytes = field(repr=False)


def canonical(task: str, kwargs: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers.

    Raises:
        ValueError: the kwargs hold something JSON cannot carry (NaN, infinities).
        TypeError: the kwargs hold something that is not JSON at all.
    """
    text = json.dumps(
        {"kwargs": kwargs, "task": task},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
        allow_nan=False,
    )
    return text.encode("ascii")


def sign_with(key: MessageKey, task: str, kwargs: Mapping[str, Any]) -> str:
    """The header value `<key id>:<hex>` for this message under `key`."""
    digest = hmac.new(key.secret, canonical(task, kwargs), hashlib.sha256).hexdigest()
    return f"{key.key_id}:{digest}"


@dataclass(frozen=True)
class KeyRing:
    """The keys of PAYWORKER_MESSAGE_KEYS, in order: the first signs, all verify."""

    keys: tuple[MessageKey, ...]

    @classmethod
    def parse(cls, text: str | None) -> KeyRing | None:
        """The ring described by `key_id:secret[,key_id:secret…]`; None when blank.

        Raises:
            KeyConfigError: an entry without a key id or a secret, a key id with other
                characters than letters, digits, `_.-`, a secret shorter than 32
                characters, or a key id given twice.
        """
        if text is None or not text.strip():
            return None
        keys: list[MessageKey] = []
        for number, entry in enumerate(text.split(","), start=1):
            key_id, colon, secret = entry.strip().partition(":")
            where = f"PAYWORKER_MESSAGE_KEYS entry {number}"
            if not colon or not _KEY_ID_RE.fullmatch(key_id):
                raise KeyConfigError(
                    f"{where}: expected key_id:secret, the key id 1-64 letters, digits or _.-"
                )
            if len(secret) < MIN_SECRET_LENGTH:
                raise KeyConfigError(
                    f"{where} ({key_id}): the secret must have at least {MIN_SECRET_LENGTH}"
                    " characters (e.g. python -c 'import secrets; print(secrets.token_hex(32))')"
                )
            if any(key.key_id == key_id for key in keys):
                raise KeyConfigError(f"{where}: key id {key_id!r} is given twice")
            keys.append(MessageKey(key_id, secret.encode("utf-8")))
        return cls(tuple(keys))

    @property
    def signer(self) -> MessageKey:
        return self.keys[0]

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(key.key_id for key in self.keys)

    def sign(self, task: str, kwargs: Mapping[str, Any]) -> str:
        """The header value for this message, under the first key."""
        return sign_with(self.signer, task, kwargs)

    def verify(self, task: str, args: Any, kwargs: Any, header: object) -> Refusal | None:
        """None if `header` authenticates this message; otherwise why it does not."""
        if header is None or header == "":
            return Refusal.UNSIGNED
        if isinstance(header, bytes):  # an AMQP header may arrive undecoded
            header = header.decode("ascii", errors="replace")
        if not isinstance(header, str):
            return Refusal.MALFORMED
        found = _SIGNATURE_RE.fullmatch(header)
        if found is None or not isinstance(kwargs, Mapping):
            return Refusal.MALFORMED
        key_id, given = found.group(1), found.group(2).lower()
        key = next((k for k in self.keys if k.key_id == key_id), None)
        if key is None:
            return Refusal.UNKNOWN_KEY
        if args:
            return Refusal.POSITIONAL_ARGS
        try:
            expected = sign_with(key, task, kwargs).partition(":")[2]
        except (TypeError, ValueError):
            return Refusal.MALFORMED
        if not hmac.compare_digest(expected, given):
            return Refusal.BAD_SIGNATURE
        return None


def signed_headers(ring: KeyRing | None, task: str, kwargs: Mapping[str, Any]) -> dict[str, str]:
    """Message headers to publish `task(**kwargs)` with: the signature when there are
    keys, nothing otherwise. Pass them as `send_task(..., headers=...)`."""
    if ring is None:
        return {}
    return {SIGNATURE_HEADER: ring.sign(task, kwargs)}
