"""Stripe-style Idempotency-Key replay, which localstripe ignores.

Keys are scoped per API key, as on Stripe. Only POSTs are idempotent (Stripe
ignores the header on GET and DELETE).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl

# Statuses that mean "the endpoint never started executing" for our purposes:
# Stripe saves no result for them, so a retry with the same key runs again.
# localstripe uses 400 for parameter validation; 401 is auth; 409 conflict.
UNCACHED_STATUSES = frozenset({400, 401, 409})


@dataclass(frozen=True)
class Fingerprint:
    """What must match for a replay: method, path and normalized params."""

    method: str
    path: str
    params: str


@dataclass
class StoredResponse:
    status: int
    body: bytes
    content_type: str


@dataclass
class Entry:
    fingerprint: Fingerprint
    response: StoredResponse | None = None  # None while still in flight
    in_flight: bool = True
    extra: dict[str, str] = field(default_factory=dict)


def api_key_of(authorization: str) -> str:
    """The secret key in an Authorization header (Bearer or Basic)."""
    scheme, _, value = authorization.partition(" ")
    if scheme == "Basic":
        try:
            return base64.b64decode(value).decode("utf-8").split(":")[0]
        except ValueError:
            return value
    return value


def normalize_params(query: str, body: bytes, content_type: str) -> str:
    """Canonical text of the request parameters, independent of the order
    the client encoded them in."""
    pairs = sorted(parse_qsl(query, keep_blank_values=True))
    if "json" in content_type:
        try:
            payload = json.loads(body or b"null")
        except ValueError:
            payload = body.decode("utf-8", "replace")
        return json.dumps([pairs, payload], sort_keys=True)
    text = body.decode("utf-8", "replace")
    pairs += sorted(parse_qsl(text, keep_blank_values=True))
    return json.dumps(sorted(pairs))


Verdict = Literal["new", "replay", "mismatch", "in_use"]


class IdempotencyCache:
    """In-memory store of (api key, idempotency key) -> Entry.

    The server is single-threaded asyncio, so `begin` (check + mark in
    flight) is atomic with respect to other requests: no lock needed.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], Entry] = {}

    def begin(self, scope: tuple[str, str], fp: Fingerprint) -> tuple[Verdict, Entry | None]:
        entry = self._entries.get(scope)
        if entry is None:
            self._entries[scope] = Entry(fingerprint=fp)
            return "new", None
        if entry.fingerprint != fp:
            return "mismatch", entry
        if entry.in_flight:
            return "in_use", entry
        return "replay", entry

    def finish(self, scope: tuple[str, str], response: StoredResponse) -> None:
        """Store the result; a status in UNCACHED_STATUSES frees the key."""
        if response.status in UNCACHED_STATUSES:
            self.abandon(scope)
            return
        entry = self._entries[scope]
        entry.response = response
        entry.in_flight = False

    def abandon(self, scope: tuple[str, str]) -> None:
        """Forget a key whose request never ran (or crashed our wrapper)."""
        self._entries.pop(scope, None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


MISMATCH_MESSAGE = (
    "Keys for idempotent requests can only be used with the same parameters "
    "they were first used with. Try using a key other than {key!r} if you "
    "meant to execute a different request."
)

IN_USE_MESSAGE = (
    "There is currently another in-progress request using this Idempotent "
    "Key (that probably means you submitted twice, and the other request is "
    "still going through): {key!r}. Please try again later."
)
