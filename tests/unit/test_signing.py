"""Authenticated messages, pure: the canonical form, HMAC-SHA256 signatures and their
verification (core/signing.py), PAYWORKER_MESSAGE_KEYS parsing, the snippet that
docs/messages.md gives upstream apps, and how Flower's events and refusal logs are masked.
No services."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.settings import Settings
from core.signing import (
    SIGNATURE_HEADER,
    KeyConfigError,
    KeyRing,
    MessageKey,
    Refusal,
    canonical,
    sign_with,
    signed_headers,
)
from tasks.authentication import mask_event_id, refusal
from worker.flower import masked_event

ROOT = Path(__file__).resolve().parents[2]
NEW_SECRET = "n" * 40
OLD_SECRET = "o" * 32 + "é:x"  # a secret may hold ':' and non-ASCII
RING = KeyRing.parse(f"new:{NEW_SECRET}, old:{OLD_SECRET}")
TASK = "payments.charge_requested"
CHARGE = {"event_id": "order-1042-charge", "user_id": "42", "amount": 1999, "currency": "usd"}

# JSON values as a decoded message holds them (no NaN: JSON has none).
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
kwargs_strategy = st.dictionaries(st.text(min_size=1, max_size=12), json_values, max_size=6)


def ring() -> KeyRing:
    assert RING is not None
    return RING


def test_the_canonical_form_is_sorted_compact_ascii_json_of_task_and_kwargs():
    # Given kwargs in any order, with a non-ASCII and a nested value
    kwargs = {"user_id": "42", "metadata": {"b": "2", "a": "ü"}, "amount": 1999}
    # When put in canonical form  /  Then the bytes are exactly the documented ones
    assert canonical(TASK, kwargs) == (
        b'{"kwargs":{"amount":1999,"metadata":{"a":"\\u00fc","b":"2"},"user_id":"42"},'
        b'"task":"payments.charge_requested"}'
    )


def test_the_signature_is_hmac_sha256_in_hex_under_the_first_key():
    expected = hmac.new(NEW_SECRET.encode(), canonical(TASK, CHARGE), hashlib.sha256).hexdigest()
    assert ring().sign(TASK, CHARGE) == f"new:{expected}"
    assert signed_headers(ring(), TASK, CHARGE) == {SIGNATURE_HEADER: f"new:{expected}"}
    assert signed_headers(None, TASK, CHARGE) == {}


def test_rotation_the_old_key_still_verifies_and_the_new_one_signs():
    old = sign_with(MessageKey("old", OLD_SECRET.encode()), TASK, CHARGE)
    assert ring().verify(TASK, (), CHARGE, old) is None
    assert ring().sign(TASK, CHARGE).startswith("new:")
    assert ring().key_ids == ("new", "old")


@pytest.mark.parametrize(
    ("header", "args", "kwargs", "reason"),
    [
        (None, (), CHARGE, Refusal.UNSIGNED),
        ("", (), CHARGE, Refusal.UNSIGNED),
        ("new", (), CHARGE, Refusal.MALFORMED),
        ("new:" + "0" * 63, (), CHARGE, Refusal.MALFORMED),
        ("new:" + "g" * 64, (), CHARGE, Refusal.MALFORMED),
        (42, (), CHARGE, Refusal.MALFORMED),
        ("gone:" + "0" * 64, (), CHARGE, Refusal.UNKNOWN_KEY),
        ("new:" + "0" * 64, (), CHARGE, Refusal.BAD_SIGNATURE),  # forged
        ("SIGNED", (), {**CHARGE, "amount": 1}, Refusal.BAD_SIGNATURE),  # tampered
        ("SIGNED", ("x",), CHARGE, Refusal.POSITIONAL_ARGS),
        ("SIGNED", (), {**CHARGE, "amount": float("nan")}, Refusal.MALFORMED),  # no JSON
        ("SIGNED", (), ["not", "a", "mapping"], Refusal.MALFORMED),
    ],
)
def test_what_does_not_verify_and_why(header, args, kwargs, reason):
    if header == "SIGNED":
        header = ring().sign(TASK, CHARGE)
    assert ring().verify(TASK, args, kwargs, header) is reason


def test_a_signature_does_not_carry_over_to_another_task_or_secret():
    header = ring().sign(TASK, CHARGE)
    assert ring().verify("payments.user_registered", (), CHARGE, header) is Refusal.BAD_SIGNATURE
    other = KeyRing.parse(f"new:{'z' * 40}")
    assert other is not None
    assert other.verify(TASK, (), CHARGE, header) is Refusal.BAD_SIGNATURE  # wrong secret


def test_the_hex_digest_may_be_upper_case_and_bytes_headers_are_read():
    key_id, _, digest = ring().sign(TASK, CHARGE).partition(":")
    assert ring().verify(TASK, (), CHARGE, f"{key_id}:{digest.upper()}") is None
    assert ring().verify(TASK, (), CHARGE, f"{key_id}:{digest}".encode()) is None


def test_without_keys_every_message_may_run():
    assert refusal(None, TASK, (), CHARGE, None) is None
    assert refusal(ring(), TASK, (), CHARGE, None) is Refusal.UNSIGNED


@settings(max_examples=200, deadline=None)
@given(kwargs=kwargs_strategy, task=st.text(min_size=1, max_size=40))
def test_a_signed_message_verifies_after_a_trip_through_json(kwargs, task):
    # Given a message signed as published
    header = ring().sign(task, kwargs)
    # When the worker reads it back from the broker's JSON, keys in another order
    decoded = json.loads(json.dumps(dict(reversed(list(kwargs.items())))))
    # Then it verifies
    assert ring().verify(task, [], decoded, header) is None


@settings(max_examples=200, deadline=None)
@given(kwargs=kwargs_strategy, extra=st.text(min_size=1, max_size=8), value=json_values)
def test_any_change_to_the_kwargs_breaks_the_signature(kwargs, extra, value):
    header = ring().sign(TASK, kwargs)
    changed = {**kwargs, extra: value}
    if canonical(TASK, changed) == canonical(TASK, kwargs):
        return  # the same key with an equal value: nothing changed
    assert ring().verify(TASK, (), changed, header) is Refusal.BAD_SIGNATURE


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("justasecret", "entry 1: expected key_id:secret"),
        (f":{NEW_SECRET}", "entry 1: expected key_id:secret"),
        (f"bad id:{NEW_SECRET}", "entry 1: expected key_id:secret"),
        ("k1:tooshort", "entry 1 (k1): the secret must have at least 32"),
        (f"k1:{NEW_SECRET},k1:{OLD_SECRET}", "entry 2: key id 'k1' is given twice"),
        (f"k1:{NEW_SECRET},", "entry 2: expected key_id:secret"),
    ],
)
def test_malformed_keys_are_refused_without_quoting_a_secret(value, complaint, monkeypatch):
    with pytest.raises(KeyConfigError, match=re.escape(complaint)) as refused:
        KeyRing.parse(value)
    for secret in (NEW_SECRET, OLD_SECRET, "tooshort", "justasecret"):
        assert secret not in str(refused.value)
    # and the settings refuse them too, without printing the environment they came from
    monkeypatch.setenv("PAYWORKER_MESSAGE_KEYS", value)
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_NEVERPRINTED")
    with pytest.raises(ValueError, match="PAYWORKER_MESSAGE_KEYS") as invalid:
        Settings()
    assert "NEVERPRINTED" not in str(invalid.value)
    assert "tooshort" not in str(invalid.value) and NEW_SECRET not in str(invalid.value)


def test_blank_keys_mean_no_keys(monkeypatch):
    assert KeyRing.parse(None) is None and KeyRing.parse("  ") is None
    monkeypatch.setenv("PAYWORKER_MESSAGE_KEYS", "")
    assert Settings().message_keyring is None
    monkeypatch.setenv("PAYWORKER_MESSAGE_KEYS", f" k2:{NEW_SECRET} ,\nk1:{OLD_SECRET}")
    parsed = Settings().message_keyring
    assert parsed is not None and parsed.key_ids == ("k2", "k1")
    assert NEW_SECRET not in repr(parsed) and NEW_SECRET not in repr(Settings())


def _documented_snippet() -> str:
    """The Python block of docs/messages.md's "Authenticated messages" section."""
    text = (ROOT / "docs" / "messages.md").read_text()
    section = text.split("## Authenticated messages", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "one Python snippet expected in the section"
    return blocks[0]


def test_the_snippet_for_upstream_apps_signs_as_the_worker_verifies():
    # Given the snippet docs/messages.md gives apps that do not use payworker's code
    snippet = _documented_snippet()
    assert len(snippet.strip().splitlines()) <= 16

    class App:
        sent: dict[str, Any] = {}

        def send_task(self, name: str, **options: Any) -> None:
            self.sent = {"name": name, **options}

    app = App()
    # When it runs with a key of the worker's ring
    exec(snippet, {"app": app, "KEY_ID": "new", "SECRET": NEW_SECRET})
    # Then the worker accepts what it publishes
    sent = app.sent
    assert sent["queue"] == "payments"
    header = sent["headers"][SIGNATURE_HEADER]
    assert ring().verify(sent["name"], (), json.loads(json.dumps(sent["kwargs"])), header) is None


@pytest.mark.parametrize(
    ("event_id", "shown"),
    [
        ("order-1042-charge", "ord…arge"),
        ("short", "sh…"),
        ("a\nb c<script>0123456789", "a?b…6789"),
        (None, "-"),
        (42, "-"),
    ],
)
def test_refusal_logs_show_only_a_masked_event_id(event_id, shown):
    assert mask_event_id({"event_id": event_id}) == shown
    assert mask_event_id(["not", "a", "dict"]) == "-"


def test_flower_drops_the_arguments_of_task_sent_events_and_masks_the_others():
    token = "tok_1NvRAWsecret9876"
    sent = {"type": "task-sent", "uuid": "u1", "name": TASK,
            "args": "()", "kwargs": f"{{'token': '{token}'}}"}
    assert masked_event(sent) == {"type": "task-sent", "uuid": "u1", "name": TASK}
    received = {"type": "task-received", "uuid": "u1", "args": [token],
                "kwargs": f'{{"token": "{token}"}}'}
    shown = json.dumps(masked_event(received), ensure_ascii=False)
    assert token not in shown and "tok_…9876" in shown
    started = {"type": "task-started", "uuid": "u1"}
    assert masked_event(started) is started
