"""Masking of card tokens and API keys, applied to everything we store, log or show."""

from __future__ import annotations

import json
import math
import re
from typing import Any

_TOKEN = re.compile(r"\btok_[A-Za-z0-9_]+")
_KEY = re.compile(r"\b(sk|rk)_(live|test)_[A-Za-z0-9]+")

# Stored payloads of invalid messages are cut to this size: garbage must not bloat the ledger.
MAX_STRING = 500
MAX_ITEMS = 60
MAX_DEPTH = 4


def mask_token(token: str) -> str:
    """`tok_…abcd`: enough to match a support ticket, useless to an attacker."""
    return f"tok_…{token[-4:]}" if len(token) > 8 else "tok_…"


# Literal secrets of this process (the configured API key, whatever its shape).
_secrets: set[str] = set()


def register_secret(value: str) -> None:
    """Mask this exact value wherever it appears, even if it looks like no known key."""
    if len(value) >= 4:
        _secrets.add(value)


def redact(text: str) -> str:
    """The text with every card token and Stripe secret key masked."""
    for secret in _secrets:
        text = text.replace(secret, "[secret]")
    text = _TOKEN.sub(lambda m: mask_token(m.group(0)), text)
    return _KEY.sub(lambda m: f"{m.group(1)}_{m.group(2)}_…", text)


def sanitize(value: Any, depth: int = 0) -> Any:
    """A JSON-safe, size-bounded, redacted copy of arbitrary message data."""
    if isinstance(value, str):
        # Postgres text and jsonb cannot hold NUL.
        text = redact(value).replace("\x00", "\\x00")
        return text if len(text) <= MAX_STRING else text[:MAX_STRING] + "…"
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)  # NaN is not JSON
    if isinstance(value, int):
        # A 10**1000 int is valid JSON to Python but not to Postgres' jsonb.
        return value if abs(value) < 2**63 else f"<int with {len(str(value))} digits>"
    if depth >= MAX_DEPTH:
        return "<nested too deep>"
    if isinstance(value, dict):
        items = list(value.items())[:MAX_ITEMS]
        return {str(sanitize(k, depth + 1)): sanitize(v, depth + 1) for k, v in items}
    if isinstance(value, list | tuple):
        return [sanitize(v, depth + 1) for v in value[:MAX_ITEMS]]
    return redact(repr(value))[:MAX_STRING]


def safe_repr(value: Any) -> str:
    """A redacted one-line repr for logs and Flower."""
    try:
        return json.dumps(sanitize(value), ensure_ascii=False, allow_nan=False)
    except ValueError:
        return redact(repr(value))[:MAX_STRING]
