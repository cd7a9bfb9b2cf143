"""The five message types (tasks.messages): what validates, what does not, and what is
stored. Pure: no services."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import InvalidMessage
from tasks.messages import (
    MESSAGE_TYPES,
    CardRemoved,
    CardTokenReceived,
    ChargeRequested,
    DefaultCardChanged,
    UserRegistered,
    parse_message,
)

BASE = {"event_id": "evt-1", "user_id": "user-1"}
TOKEN = "tok_1Nv0SECRETabcd9876"

VALID: dict[str, list[dict[str, Any]]] = {
    "user_registered": [
        {"email": "ada@example.com"},
        {"email": "ada@example.com", "name": "Ada", "metadata": {"plan": "pro"}},
        {"email": "ada@example.com", "name": None, "metadata": None},
    ],
    "card_token_received": [
        {"token": TOKEN},
        {"token": TOKEN, "make_default": True},
    ],
    "default_card_changed": [{"card_id": "card_1AbC"}],
    "card_removed": [{"card_id": "card_1AbC"}],
    "charge_requested": [
        {"amount": 1999, "currency": "usd"},
        {"amount": 50, "currency": "EUR", "card_id": "card_1AbC", "description": "x",
         "metadata": {"order": "42"}},
    ],
}
MODELS = {
    "user_registered": UserRegistered,
    "card_token_received": CardTokenReceived,
    "default_card_changed": DefaultCardChanged,
    "card_removed": CardRemoved,
    "charge_requested": ChargeRequested,
}
CASES = [(t, fields) for t, examples in VALID.items() for fields in examples]


def _invalid(message_type: str, **fields: Any) -> str:
    with pytest.raises(InvalidMessage) as info:
        parse_message(message_type, {**BASE, **fields})
    assert info.value.code == "invalid_message"
    return info.value.message


def test_the_contract_names_five_types():
    assert set(MESSAGE_TYPES) == set(MODELS)
    assert all(MESSAGE_TYPES[name] is model for name, model in MODELS.items())


@pytest.mark.parametrize(("message_type", "fields"), CASES)
def test_valid_examples_pass(message_type, fields):
    # Given a well-formed message  /  When parsed  /  Then it is the type's model
    message = parse_message(message_type, {**BASE, **fields})
    assert isinstance(message, MODELS[message_type])
    assert message.event_id == "evt-1" and message.user_id == "user-1"


@pytest.mark.parametrize(("message_type", "fields"), CASES)
@pytest.mark.parametrize("extra", ["amount_cents", "userId", "eventid", "extra"])
def test_unknown_kwargs_are_rejected(message_type, fields, extra):
    # Given a valid message with one unknown kwarg  /  Then it is invalid, naming the kwarg
    assert extra in _invalid(message_type, **fields, **{extra: 1})


@pytest.mark.parametrize("message_type", sorted(MODELS))
@pytest.mark.parametrize("field", ["event_id", "user_id"])
@pytest.mark.parametrize("value", [None, 1, "", "x" * 201, ["a"], {"a": "b"}])
def test_event_id_and_user_id_are_strings_of_1_to_200(message_type, field, value):
    fields = {**VALID[message_type][0], field: value}
    _invalid(message_type, **fields)


@pytest.mark.parametrize("message_type", sorted(MODELS))
def test_ids_of_200_chars_are_accepted(message_type):
    fields = {**VALID[message_type][0], "event_id": "e" * 200, "user_id": "u" * 200}
    assert parse_message(message_type, {**BASE, **fields}).event_id == "e" * 200


@pytest.mark.parametrize(
    ("message_type", "fields"),
    [
        ("user_registered", {"email": "not-an-email"}),
        ("user_registered", {"email": 5}),
        ("user_registered", {}),
        ("user_registered", {"email": "a@b.co", "name": 7}),
        ("user_registered", {"email": "a@b.co", "metadata": "x"}),
        ("user_registered", {"email": "a@b.co", "metadata": {"k": 1}}),
        ("user_registered", {"email": "a@b.co", "metadata": {"event_id": "mine"}}),
        ("user_registered", {"email": "a@b.co", "metadata": {"k" * 41: "v"}}),
        ("user_registered", {"email": "a@b.co", "metadata": {"k": "v" * 501}}),
        ("user_registered", {"email": "a@b.co", "metadata": {f"k{i}": "v" for i in range(49)}}),
        ("card_token_received", {"token": "card_123"}),
        ("card_token_received", {"token": 123}),
        ("card_token_received", {}),
        ("card_token_received", {"token": TOKEN, "make_default": "true"}),
        ("card_token_received", {"token": TOKEN, "make_default": 1}),
        ("default_card_changed", {"card_id": "tok_123"}),
        ("default_card_changed", {}),
        ("card_removed", {"card_id": None}),
        ("charge_requested", {"amount": 12.5, "currency": "usd"}),
        ("charge_requested", {"amount": 100.0, "currency": "usd"}),
        ("charge_requested", {"amount": "100", "currency": "usd"}),
        ("charge_requested", {"amount": True, "currency": "usd"}),
        ("charge_requested", {"amount": None, "currency": "usd"}),
        ("charge_requested", {"currency": "usd"}),
        ("charge_requested", {"amount": 100}),
        ("charge_requested", {"amount": 100, "currency": "US"}),
        ("charge_requested", {"amount": 100, "currency": "usdx"}),
        ("charge_requested", {"amount": 100, "currency": 840}),
        ("charge_requested", {"amount": 100, "currency": "usd", "card_id": "tok_1"}),
        ("charge_requested", {"amount": 100, "currency": "usd", "description": 1}),
        ("charge_requested", {"amount": 100, "currency": "usd", "metadata": ["a"]}),
        ("charge_requested", {"amount": 100, "currency": "usd", "metadata": {"user_id": "x"}}),
    ],
)
def test_strict_types_and_formats(message_type, fields):
    # Given a message with a field of the wrong type or shape  /  Then it is invalid
    _invalid(message_type, **fields)


@pytest.mark.parametrize(
    ("message_type", "fields"),
    [
        ("user_registered", {"email": "a@b.co", "name": "Ada\x00"}),
        ("user_registered", {"email": "a@b.co", "metadata": {"k": "v\x00"}}),
        ("charge_requested", {"amount": 100, "currency": "usd", "description": "\x00"}),
        ("card_removed", {"card_id": "card_1", "user_id": "u\x00"}),
    ],
)
def test_nul_characters_are_rejected(message_type, fields):
    # Given a field with a NUL character: a valid str, but Postgres stores none in text/jsonb
    # Then the message is invalid rather than accepted and unstorable
    _invalid(message_type, **fields)


def test_currency_is_accepted_in_any_case_and_kept_lower_case():
    message = parse_message("charge_requested", {**BASE, "amount": 100, "currency": "EuR"})
    assert isinstance(message, ChargeRequested) and message.currency == "eur"


def test_error_messages_never_echo_a_token():
    # Given a card message carrying a token, invalid for another reason or malformed itself
    for token in (TOKEN, "tok_SECRET-with-dash-12345"):
        message = _invalid("card_token_received", token=token, make_default="yes")
        # Then the error does not repeat the token
        assert token not in message


def test_stored_payload_masks_the_token_but_the_fingerprint_sees_it():
    # Given the same card message with two different tokens
    first = parse_message("card_token_received", {**BASE, "token": TOKEN})
    other = parse_message("card_token_received", {**BASE, "token": "tok_1Nv0OTHERabcd9876"})
    again = parse_message("card_token_received", {**BASE, "token": TOKEN})
    # Then the stored payload shows the token masked ...
    stored = first.stored_payload()
    assert stored["token"] == "tok_…9876" and TOKEN not in str(stored)
    # ... while the fingerprint still tells a redelivery from a conflicting payload
    assert first.fingerprint() == again.fingerprint()
    assert first.fingerprint() != other.fingerprint()
    assert TOKEN not in first.fingerprint()


def test_fingerprint_depends_on_type_and_payload():
    a = parse_message("default_card_changed", {**BASE, "card_id": "card_1"})
    b = parse_message("card_removed", {**BASE, "card_id": "card_1"})
    c = parse_message("card_removed", {**BASE, "card_id": "card_2"})
    assert len({a.fingerprint(), b.fingerprint(), c.fingerprint()}) == 3


def test_stripe_metadata_always_names_event_and_user():
    message = parse_message("charge_requested", {**BASE, "amount": 100, "currency": "usd",
                                                 "metadata": {"order": "42"}})
    assert isinstance(message, ChargeRequested)
    assert message.stripe_metadata(message.metadata) == {
        "order": "42", "event_id": "evt-1", "user_id": "user-1",
    }


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(message_type=st.sampled_from(sorted(MODELS)),
       kwargs=st.dictionaries(
           st.sampled_from(["event_id", "user_id", "email", "token", "card_id", "amount",
                            "currency", "metadata", "make_default", "name", "description"])
           | st.text(max_size=10),
           json_values, max_size=8))
def test_arbitrary_kwargs_give_a_message_or_invalid_message_only(message_type, kwargs):
    # Given any JSON-shaped kwargs  /  When parsed
    try:
        message = parse_message(message_type, kwargs)
    except InvalidMessage as exc:
        # Then a rejection is a readable InvalidMessage ...
        assert exc.message
        return
    # ... and an acceptance is a message using only the type's own fields
    assert set(kwargs) <= set(MODELS[message_type].model_fields)
    assert isinstance(message, MODELS[message_type])
