"""Masking of card tokens and API keys, applied to everything we store, log or show; and
the detection of what must never be stored at all (card numbers and Stripe secrets in a
message's free text)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from typing import Any

# No `\b` before any prefix: `\b` does not fire between `_` and a letter, so `x_tok_…`
# would slip through. A prefix may only make us mask more, never less.
_TOKEN = re.compile(r"tok_[A-Za-z0-9_]+")
_KEY = re.compile(r"(sk|rk)_(live|test)_[A-Za-z0-9]+")
# The client secret of a PaymentIntent or SetupIntent: `pi_123_secret_456`.
_CLIENT_SECRET = re.compile(r"(pi|seti)_([A-Za-z0-9]+)_secret_[A-Za-z0-9]+")

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
    """The text with every card token, Stripe secret key and client secret masked."""
    for secret in _secrets:
        text = text.replace(secret, "[secret]")
    text = _TOKEN.sub(lambda m: mask_token(m.group(0)), text)
    text = _KEY.sub(lambda m: f"{m.group(1)}_{m.group(2)}_…", text)
    return _CLIENT_SECRET.sub(lambda m: f"{m.group(1)}_{m.group(2)}_secret_…", text)


# ---- card numbers (PANs) ------------------------------------------------------------------

# Card numbers have 13 to 19 digits (ISO/IEC 7812).
PAN_MIN_DIGITS = 13
PAN_MAX_DIGITS = 19
# Digit groups as people write card numbers: "4242 4242 4242 4242", "4242-4242-…",
# "4242.4242.…", up to 3 separator characters between groups (" - "). `\d` is any Unicode
# decimal digit, so full-width and other scripts' digits count too.
_SEPARATOR = r"[\s.\-\u2010-\u2015\u2212]{1,3}"
_DIGIT_RUN = re.compile(rf"\d+(?:{_SEPARATOR}\d+)*")
_DIGIT_GROUP = re.compile(r"\d+")
# Card numbers are written in groups of 4 to 6 digits (4-4-4-4, Amex 4-6-5), the last of a
# 19-digit number in 3. A group of 1 or 2 digits (dates: 2024-01-15, amounts: 12.50) never
# belongs to one, so it separates numbers rather than joining them.
_MIN_GROUP = 3
# UUIDs are common in metadata and their all-digit groups could join into a Luhn-valid run;
# no card number looks like one.
_UUID = re.compile(
    r"(?<![0-9A-Fa-f])[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-"
    r"[0-9A-Fa-f]{12}(?![0-9A-Fa-f])"
)


def luhn_valid(digits: str) -> bool:
    """True when `digits` (decimal digits, any script) pass the Luhn check of card numbers."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def card_number_spans(text: str) -> Iterator[tuple[int, int]]:
    """Where `text` holds something that looks like a card number: a Luhn-valid run of 13 to
    19 digits, written bare or in groups with spaces, dashes or dots between them. Every
    contiguous range of groups is tried, so digits before or after do not hide one."""
    scanned = _UUID.sub(lambda m: "x" * len(m.group(0)), text)
    for run in _DIGIT_RUN.finditer(scanned):
        groups = [(m.start(), m.end()) for m in _DIGIT_GROUP.finditer(text, run.start(), run.end())]
        for first in range(len(groups)):
            digits = ""
            for index in range(first, len(groups)):
                start, end = groups[index]
                if index > first and (end - start < _MIN_GROUP or len(digits) < _MIN_GROUP):
                    break
                digits += text[start:end]
                if len(digits) > PAN_MAX_DIGITS:
                    break
                if len(digits) >= PAN_MIN_DIGITS and luhn_valid(digits):
                    yield groups[first][0], end
                    break


def has_card_number(text: str) -> bool:
    """True when `text` holds something that looks like a card number (`card_number_spans`)."""
    return next(card_number_spans(text), None) is not None


def mask_card_numbers(text: str) -> str:
    """The text with everything that looks like a card number replaced by `[card number]`."""
    spans = list(card_number_spans(text))
    if not spans:
        return text
    parts, position = [], 0
    for start, end in sorted(spans):
        if start < position:  # overlaps a masked one: extend it
            start = position
        parts.append(text[position:start])
        if end > start:
            parts.append("[card number]")
        position = max(position, end)
    parts.append(text[position:])
    return "".join(parts)


def secret_kind(text: str) -> str | None:
    """What secret `text` holds, if any: "card number", "card token", "Stripe secret key",
    or "client secret". Free text of a message must hold none of these."""
    if _KEY.search(text):
        return "Stripe secret key"
    if _CLIENT_SECRET.search(text):
        return "client secret"
    if _TOKEN.search(text):
        return "card token"
    if has_card_number(text):
        return "card number"
    return None


def scrub(text: str) -> str:
    """`redact`, and card numbers masked too: for text built from a message's content (an
    unknown kwarg's name, a metadata key). Plain log lines get `redact` only, so that a
    numeric id stays searchable there."""
    return mask_card_numbers(redact(text))


# ---- stored and shown copies of arbitrary data ------------------------------------------------

# A string is masked on this much more than what is kept, so that a card number cut in two
# by the cut is still recognised (and then cut away).
_CUT_MARGIN = PAN_MAX_DIGITS * 4


def sanitize(value: Any, depth: int = 0) -> Any:
    """A JSON-safe, size-bounded, redacted copy of arbitrary message data; card numbers are
    masked in every string."""
    if isinstance(value, str):
        # Postgres text and jsonb cannot hold NUL.
        text = scrub(value[: MAX_STRING + _CUT_MARGIN]).replace("\x00", "\\x00")
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
    return sanitize(repr(value)[: MAX_STRING + _CUT_MARGIN], depth)


def safe_repr(value: Any) -> str:
    """A redacted one-line repr for logs and Flower."""
    try:
        return json.dumps(sanitize(value), ensure_ascii=False, allow_nan=False)
    except ValueError:
        return scrub(repr(value)[: MAX_STRING + _CUT_MARGIN])[:MAX_STRING]
