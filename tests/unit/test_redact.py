"""Masking of card tokens, API keys and client secrets (core.redact), card number detection,
the bounds on stored garbage and on error text, and the log filter. Pure: no services."""

from __future__ import annotations

import json
import logging
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import MAX_ERROR_TEXT, clip
from core.redact import (
    MAX_DEPTH,
    MAX_ITEMS,
    MAX_STRING,
    PAN_MAX_DIGITS,
    PAN_MIN_DIGITS,
    has_card_number,
    luhn_valid,
    mask_card_numbers,
    mask_token,
    redact,
    safe_repr,
    sanitize,
    secret_kind,
)
from tasks.logs import RedactingFilter, log_text

TOKEN = "tok_1Nv0SECRETabcd9876"
KEYS = ["sk_test_SECRETKEYMARKER123", "sk_live_51Habcdef0123", "rk_live_restricted987"]


def test_tokens_are_masked_to_their_last_four():
    assert mask_token(TOKEN) == "tok_…9876"
    assert redact(f"card {TOKEN} added") == "card tok_…9876 added"
    assert redact("tok_short") == "tok_…hort"
    assert TOKEN not in redact(f"url?token={TOKEN}&x=1")


def test_secret_keys_are_masked_entirely():
    for key in KEYS:
        masked = redact(f"Invalid API Key provided: {key}")
        assert key not in masked and key[8:] not in masked, masked


def test_nested_structures_are_masked_everywhere():
    # Given tokens and keys in values, keys and lists, a few levels deep
    value = {"token": TOKEN, "list": [TOKEN, {"k": KEYS[0]}], TOKEN: "as a key",
             "n": {"deeper": f"text {TOKEN} text"}}
    # When sanitised  /  Then no full secret survives, and tokens show masked
    dumped = json.dumps(sanitize(value), ensure_ascii=False)
    assert TOKEN not in dumped and KEYS[0] not in dumped
    assert "tok_…9876" in dumped
    assert json.loads(safe_repr(value)) == sanitize(value)


def test_huge_ints_become_descriptions_that_postgres_accepts():
    assert sanitize(2**63 - 1) == 2**63 - 1
    assert sanitize(10**30) == "<int with 31 digits>"
    assert sanitize([10**400]) == ["<int with 401 digits>"]
    assert sanitize(-(10**30)).startswith("<int with")
    assert isinstance(sanitize({"a": 10**1000})["a"], str)


def test_deep_nesting_long_strings_and_many_items_are_bounded():
    # Given absurdly deep, long and wide values
    deep: object = "leaf"
    for _ in range(500):
        deep = [deep]
    # When sanitised  /  Then depth, length and width are cut
    bounded = sanitize({"deep": deep, "long": "x" * 100_000, "wide": list(range(10_000))})
    text = json.dumps(bounded)
    assert len(text) < 5_000
    assert "<nested too deep>" in text
    assert len(bounded["long"]) <= MAX_STRING + 1
    assert len(bounded["wide"]) == MAX_ITEMS

    def depth(value: object) -> int:
        if isinstance(value, list):
            return 1 + max((depth(v) for v in value), default=0)
        if isinstance(value, dict):
            return 1 + max((depth(v) for v in value.values()), default=0)
        return 0

    assert depth(bounded) <= MAX_DEPTH + 1


def test_safe_repr_never_raises():
    for weird in (float("nan"), {"x": float("inf")}, object(), {1: b"bytes"}, [TOKEN] * 3):
        shown = safe_repr(weird)
        assert isinstance(shown, str) and TOKEN not in shown


def test_sanitized_values_are_storable_as_postgres_jsonb():
    # Given values JSON allows (as Python and Celery write it) but jsonb refuses:
    # NaN and infinities, and the NUL character in a string or a key
    value = {"nan": float("nan"), "inf": [float("-inf")], "nul": "a\x00b", "k\x00": 1}
    # When sanitised for the ledger
    stored = sanitize(value)
    # Then the result is strict JSON without \u0000, which jsonb accepts
    dumped = json.dumps(stored, allow_nan=False)
    assert "\\u0000" not in dumped


tokens = st.from_regex(r"\Atok_[A-Za-z0-9_]{9,40}\Z")
texts_with_tokens = st.builds(lambda a, t, b: f"{a} {t} {b}", st.text(max_size=10), tokens,
                              st.text(max_size=10))
values = st.recursive(
    st.none() | st.booleans() | st.integers() | texts_with_tokens | tokens,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=5) | tokens, children, max_size=4),
    max_leaves=15,
)


@settings(max_examples=200, deadline=None)
@given(value=values)
def test_no_full_token_survives_sanitize(value):
    # Given any JSON-shaped value containing tokens at any depth
    found: list[str] = []

    def collect(v: object) -> None:
        if isinstance(v, str):
            found.extend(w for w in v.split() if w.startswith("tok_"))
        elif isinstance(v, list):
            for item in v:
                collect(item)
        elif isinstance(v, dict):
            for key, item in v.items():
                collect(key)
                collect(item)

    collect(value)
    # When sanitised  /  Then none of them appears in full
    dumped = json.dumps(sanitize(value), ensure_ascii=False)
    assert not [t for t in found if len(t) > 8 and t in dumped]


def _record(msg: str, *args: object, exc_info: object = None) -> logging.LogRecord:
    return logging.LogRecord("x", logging.ERROR, __file__, 1, msg, args, exc_info)  # type: ignore[arg-type]


def test_log_filter_masks_messages_and_arguments():
    # Given a record whose message and arguments carry a token and a key
    record = _record("charging %s with %s", TOKEN, KEYS[0])
    # When it passes the filter
    assert RedactingFilter().filter(record)
    # Then the formatted line shows neither
    line = logging.Formatter("%(message)s").format(record)
    assert TOKEN not in line and KEYS[0] not in line


def test_log_filter_masks_tracebacks():
    # Given a record carrying an exception whose message names a token (as Celery's
    # MaxRetriesExceededError does with the task's kwargs)
    try:
        raise RuntimeError(f"Can't retry task kwargs:{{'token': '{TOKEN}'}}")
    except RuntimeError:
        record = _record("task failed", exc_info=sys.exc_info())
    # When it passes the filter and is formatted the way a handler does
    RedactingFilter().filter(record)
    line = logging.Formatter("%(message)s").format(record)
    # Then the traceback shows the token masked too
    assert "RuntimeError" in line
    assert TOKEN not in line, line


# ---- masks a prefix cannot dodge --------------------------------------------------------

# Anything that may stand before a secret: letters, digits, `_` (where `\b` never fires),
# punctuation, other scripts.
prefixes = st.text(max_size=12)
secrets = (
    tokens
    | st.from_regex(r"\A(sk|rk)_(live|test)_[A-Za-z0-9]{8,40}\Z")
    | st.from_regex(r"\A(pi|seti)_[A-Za-z0-9]{8,24}_secret_[A-Za-z0-9]{8,24}\Z")
)


@settings(max_examples=300, deadline=None)
@given(prefix=prefixes, secret=secrets, suffix=st.text(max_size=12))
def test_no_prefix_dodges_the_masks(prefix, secret, suffix):
    # Given a token, a key or a client secret glued to anything at all (`x_tok_…`)
    text = f"{prefix}{secret}{suffix}"
    # When redacted  /  Then it does not survive, whatever stood before or after it
    assert secret not in redact(text)


def test_prefixed_secrets_are_masked():
    assert redact(f"x_{TOKEN}") == "x_tok_…9876"
    assert redact("id=x_sk_live_51Habcdef0123") == "id=x_sk_live_…"
    assert redact("9rk_test_abcdef123") == "9rk_test_…"
    assert redact("cs pi_3Mtw_secret_YrKJUKribcBj x") == "cs pi_3Mtw_secret_… x"
    assert redact("seti_1Mm_secret_abcDEF") == "seti_1Mm_secret_…"


# ---- card numbers ------------------------------------------------------------------------

# Stripe's test numbers (and a 19-digit one): every one passes the Luhn check.
PANS = ["4242424242424242", "5555555555554444", "378282246310005", "6011111111111117",
        "3056930009020004", "4000000000000002", "4222222222222", "6011000990139424",
        "6205500000000000004"]


def _check_digit(body: str) -> str:
    return next(d for d in "0123456789" if luhn_valid(body + d))


pans = st.integers(PAN_MIN_DIGITS, PAN_MAX_DIGITS).flatmap(
    lambda n: st.text("0123456789", min_size=n - 1, max_size=n - 1)
).map(lambda body: body + _check_digit(body))
separators = st.sampled_from([" ", "-", ".", "  ", " - ", "\u00a0", "\u2013", "\t"])


@st.composite
def written_pans(draw: st.DrawFn) -> tuple[str, str]:
    """A card number as a person writes it: bare, or in groups of 4 (the last 3 or more)
    with one kind of separator."""
    pan = draw(pans)
    if draw(st.booleans()):
        return pan, pan
    groups = [pan[i:i + 4] for i in range(0, len(pan), 4)]
    if len(groups[-1]) < 3:
        groups[-2:] = [groups[-2] + groups[-1]]
    return pan, draw(separators).join(groups)


no_digits = st.text(st.characters(blacklist_categories=("Nd", "Cs")), max_size=15)


@pytest.mark.parametrize("pan", PANS)
def test_stripe_test_numbers_pass_the_luhn_check(pan):
    assert luhn_valid(pan)
    assert not luhn_valid(pan[:-1] + str((int(pan[-1]) + 1) % 10))


@settings(max_examples=400, deadline=None)
@given(written=written_pans(), before=no_digits, after=no_digits)
def test_a_card_number_is_found_however_it_is_written(written, before, after):
    # Given a Luhn-valid number of 13-19 digits, bare or grouped, inside any text
    pan, shown = written
    text = f"{before}{shown}{after}"
    # Then it is found, named, and masked away entirely
    assert has_card_number(text)
    assert secret_kind(text) in ("card number", "card token", "Stripe secret key",
                                 "client secret")
    masked = mask_card_numbers(text)
    assert "[card number]" in masked
    assert pan not in "".join(c for c in masked if c.isdigit())


@settings(max_examples=200, deadline=None)
@given(written=written_pans(), other=st.text("0123456789", min_size=1, max_size=6),
       sep=separators)
def test_digits_before_or_after_do_not_hide_a_card_number(written, other, sep):
    # Given a card number with another number beside it ("order 1042 4242 4242 …")
    _, shown = written
    for text in (f"order {other}{sep}{shown}", f"{shown}{sep}{other} pcs"):
        # Then it is still found
        assert has_card_number(text), text


def test_fullwidth_digits_are_digits():
    assert has_card_number("\uff14\uff12\uff14\uff12" * 4)


@pytest.mark.parametrize("text", [
    "4242424242424241",                      # Luhn-invalid
    "order 1042, 19.99 USD",
    "2024-01-15 - 2024-02-14",               # a date range: 16 digits in short groups
    "Invoice period 2024-01-01 to 2024-01-31",
    "call +1 555-123-4567",
    "550e8400-e29b-41d4-a716-446655440000",  # UUIDs, all-digit groups included
    "12345678-1234-1234-1234-123456789012",
    "424242424242424242424242",              # 24 digits: no card number has them
    "4242 4242 4242",                        # 12 digits
])
def test_other_numbers_are_not_card_numbers(text):
    assert not has_card_number(text)
    assert mask_card_numbers(text) == text


def test_card_numbers_are_masked_in_every_stored_string():
    # Given garbage with card numbers in a value, a key and a nested list
    value = {"note": "pay with 4242 4242 4242 4242 please", "5555555555554444": ["x",
             "378282246310005"]}
    # When sanitised  /  Then no card number is left, and the rest of the text is
    dumped = json.dumps(sanitize(value))
    assert not has_card_number(dumped)
    assert "pay with [card number] please" in dumped


def test_a_card_number_across_the_cut_is_not_left_half_shown():
    # Given a long string whose card number straddles the stored length
    text = "x" * (MAX_STRING - 8) + "4242424242424242" + "y" * 100
    # When sanitised  /  Then not even its first digits are kept
    assert "42424242" not in sanitize(text)


# ---- bounded error text ----------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=3000), limit=st.integers(64, 2000), keep_end=st.booleans())
def test_clip_bounds_bytes(text, limit, keep_end):
    clipped = clip(text, limit, keep_end=keep_end)
    assert len(clipped.encode("utf-8", "replace")) <= limit
    if len(text.encode("utf-8", "replace")) <= limit:
        assert clipped == text
    else:
        assert "[cut: " in clipped


def test_log_values_are_redacted_printable_and_bounded():
    # Given a log value with a token, a terminal escape, a bidi override and 10 KB of text
    value = f"{TOKEN} \x1b[31mred\u202e " + "é" * 10_000
    # When prepared for a log line
    shown = log_text(value)
    # Then the token is masked, the control characters are shown as escapes, and it fits
    assert TOKEN not in shown and "\x1b" not in shown and "\u202e" not in shown
    assert "\\x1b[31mred\\u202e" in shown
    assert len(shown.encode()) <= MAX_ERROR_TEXT


def test_log_filter_bounds_messages_and_tracebacks():
    # Given a record with a 1 MB message and a traceback quoting it
    try:
        raise ValueError("v" * 1_000_000)
    except ValueError:
        record = _record("big %s", "m" * 1_000_000, exc_info=sys.exc_info())
    # When it passes the filter
    RedactingFilter().filter(record)
    # Then both are cut to MAX_ERROR_TEXT bytes, the traceback keeping its end
    assert len(record.getMessage().encode()) <= MAX_ERROR_TEXT
    assert record.exc_text is not None and len(record.exc_text.encode()) <= MAX_ERROR_TEXT
    assert record.exc_text.endswith("v")
