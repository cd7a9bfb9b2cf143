"""Masking of card tokens and API keys (core.redact), the bounds on stored garbage, and the
log filter. Pure: no services."""

from __future__ import annotations

import json
import logging
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from core.redact import MAX_DEPTH, MAX_ITEMS, MAX_STRING, mask_token, redact, safe_repr, sanitize
from tasks.logs import RedactingFilter

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
