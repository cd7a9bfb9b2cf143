"""The eight message types (tasks.messages): what validates, what does not, and what is
stored; ids, free text, metadata and size at the edge. Pure: no services."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import MAX_ERROR_TEXT, InvalidMessage
from core.redact import secret_kind
from tasks.messages import (
    MAX_PROBLEMS,
    MESSAGE_TYPES,
    RESERVED_METADATA_KEYS,
    CardRemoved,
    CardTokenReceived,
    ChargeRequested,
    DefaultCardChanged,
    PaymentMethodReceived,
    RefundRequested,
    SetupRequested,
    UserRegistered,
    check_size,
    is_valid_id,
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
    "default_card_changed": [{"card_id": "card_1AbC"}, {"card_id": "pm_1AbC"}],
    "card_removed": [{"card_id": "card_1AbC"}, {"card_id": "pm_card_visa"}],
    "charge_requested": [
        {"amount": 1999, "currency": "usd"},
        {"amount": 50, "currency": "EUR", "card_id": "card_1AbC", "description": "x",
         "metadata": {"order": "42"}},
        {"amount": 50, "currency": "eur", "card_id": "pm_1AbC"},
    ],
    "payment_method_received": [
        {"payment_method": "pm_1AbC"},
        {"payment_method": "pm_card_visa", "make_default": True},
    ],
    "setup_requested": [{}, {"usage": "on_session"}],
    "refund_requested": [
        {"charge_event_id": "evt-charge-1"},
        {"charge_event_id": "evt-charge-1", "amount": 500, "reason": "requested_by_customer",
         "metadata": {"ticket": "T-9"}},
    ],
}
MODELS = {
    "user_registered": UserRegistered,
    "card_token_received": CardTokenReceived,
    "default_card_changed": DefaultCardChanged,
    "card_removed": CardRemoved,
    "charge_requested": ChargeRequested,
    "payment_method_received": PaymentMethodReceived,
    "setup_requested": SetupRequested,
    "refund_requested": RefundRequested,
}
CASES = [(t, fields) for t, examples in VALID.items() for fields in examples]


@pytest.mark.parametrize(
    ("message_type", "fields"),
    [
        ("payment_method_received", {"payment_method": "card_1AbC"}),
        ("payment_method_received", {"payment_method": "tok_1AbC"}),
        ("payment_method_received", {"payment_method": "pm_1AbC", "make_default": "yes"}),
        ("setup_requested", {"usage": "sometimes"}),
        ("refund_requested", {}),
        ("refund_requested", {"charge_event_id": "evt 1"}),
        ("refund_requested", {"charge_event_id": "e", "amount": 0}),
        ("refund_requested", {"charge_event_id": "e", "amount": -5}),
        ("refund_requested", {"charge_event_id": "e", "amount": 5.5}),
        ("refund_requested", {"charge_event_id": "e", "amount": "500"}),
        ("refund_requested", {"charge_event_id": "e", "reason": "changed_mind"}),
        ("refund_requested", {"charge_event_id": "e", "metadata": {"event_id": "x"}}),
        ("default_card_changed", {"card_id": "src_1AbC"}),
    ],
)
def test_new_messages_refuse_what_the_contract_does_not_allow(message_type, fields):
    # Given a modern-path message with a field the contract refuses
    # When parsed  /  Then it is an invalid_message naming a field
    message = _invalid(message_type, **fields)
    assert message


def _invalid(message_type: str, **fields: Any) -> str:
    with pytest.raises(InvalidMessage) as info:
        parse_message(message_type, {**BASE, **fields})
    assert info.value.code == "invalid_message"
    return info.value.message


def test_the_contract_names_eight_types():
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


# ---- ids ---------------------------------------------------------------------------------

ID_CHARS = "ABCXYZabcxyz0189._:@/+=-"


@pytest.mark.parametrize("value", ["order-1042:charge", "user@example.com", "a/b+c=d.e_f",
                                   "0", ID_CHARS])
def test_ids_of_the_allowed_characters_pass(value):
    message = parse_message("card_removed", {**BASE, "card_id": "card_1", "event_id": value,
                                             "user_id": value})
    assert message.event_id == value == message.user_id


@pytest.mark.parametrize("field", ["event_id", "user_id"])
@pytest.mark.parametrize("value", [
    "evt\x1b[31m",        # ESC: a terminal escape sequence
    "evt\u202eevil",      # a bidi override
    "заказ-1",            # not latin-1: cannot go into an Idempotency-Key header
    "café",               # latin-1, still outside the set
    "evt 1",              # a space
    "evt\n",              # a final newline
    "evt\t1",
    "evt\u200b",          # zero-width space
])
def test_ids_outside_the_allowed_characters_are_refused(field, value):
    # Given an id with a character that headers, logs or terminals would not take as it is
    # Then the message is invalid, and the error names the field, not the value
    error = _invalid("card_removed", card_id="card_1", **{field: value})
    assert field in error and value not in error


@settings(max_examples=200, deadline=None)
@given(value=st.text(min_size=1, max_size=30))
def test_an_id_passes_exactly_when_it_is_of_the_allowed_characters(value):
    allowed = all(c in ID_CHARS or (c.isascii() and c.isalnum()) for c in value)
    assert is_valid_id(value) == allowed
    try:
        parse_message("card_removed", {**BASE, "card_id": "card_1", "user_id": value})
        accepted = True
    except InvalidMessage:
        accepted = False
    assert accepted == allowed


# ---- free text: no card numbers, no Stripe secrets --------------------------------------

SECRETS = {
    "card number": ["4242424242424242", "4242 4242 4242 4242", "5555-5555-5555-4444",
                    "3782.822463.10005", "card4242424242424242"],
    "card token": ["tok_1Nv0SECRETabcd9876", "x_tok_visa"],
    "Stripe secret key": ["sk_live_51Habcdef0123", "rk_test_abcdef123456"],
    "client secret": ["pi_3MtwBwLkdIwHu7ix28a3tqPa_secret_YrKJUKribcBjcG8HVhfZluoGH",
                      "seti_1Mm8s8LkdIwHu7ix0OXBfTRG_secret_NXDICkPqPeiBTAFqWmkbff09lRmSVXe"],
}
SECRET_CASES = [(kind, value) for kind, values in SECRETS.items() for value in values]
CHARGE = {"amount": 1000, "currency": "usd"}


def _refused(message_type: str, fields: dict[str, Any]) -> InvalidMessage:
    with pytest.raises(InvalidMessage) as info:
        parse_message(message_type, {**BASE, **fields})
    return info.value


@pytest.mark.parametrize(("kind", "secret"), SECRET_CASES)
@pytest.mark.parametrize(("message_type", "fields", "path"), [
    ("charge_requested", lambda s: {**CHARGE, "description": f"Order 42, {s}, thanks"},
     ("description",)),
    ("charge_requested", lambda s: {**CHARGE, "metadata": {"note": f"paid by {s}"}},
     ("metadata", "note")),
    ("user_registered", lambda s: {"email": "a@b.co", "name": f"Ada {s}"}, ("name",)),
    ("user_registered", lambda s: {"email": "a@b.co", "metadata": {"plan": s}},
     ("metadata", "plan")),
], ids=["description", "metadata value", "name", "registration metadata"])
def test_free_text_with_a_card_number_or_secret_is_refused_and_replaced(
    kind, secret, message_type, fields, path
):
    # Given free text carrying a card number, a token, a secret key or a client secret
    error = _refused(message_type, fields(secret))
    # Then the message is invalid, saying what was found where, but not the text itself
    assert "refused: " in error.message and kind in error.message
    assert secret not in error.message
    # ... and the copy the ledger keeps has the field replaced
    stored = error.stored_payload
    assert stored is not None and secret not in json.dumps(stored)
    field = stored
    for part in path:
        field = field[part]
    assert field == f"[refused: {kind}]"


@pytest.mark.parametrize(("kind", "secret"), SECRET_CASES)
def test_a_metadata_key_with_a_card_number_or_secret_is_refused(kind, secret):
    if len(secret) > 40:
        secret = secret[:40]
        kind = secret_kind(secret) or kind
    error = _refused("charge_requested", {**CHARGE, "metadata": {secret: "v", "ok": "fine"}})
    assert "metadata key #1: refused" in error.message
    assert secret not in error.message
    stored = error.stored_payload
    assert stored is not None
    assert stored["metadata"] == {f"[refused key #1: {kind}]": "v", "ok": "fine"}


def test_other_problems_are_still_listed_beside_a_refusal():
    # Given a refused description and, besides, a string amount
    error = _refused("charge_requested", {"amount": "100", "currency": "usd",
                                          "description": "4242424242424242"})
    # Then both problems are listed
    assert "description: refused" in error.message and "amount:" in error.message


@pytest.mark.parametrize("text", [
    "Order 1042 of 2024-01-15, 2 items at 19.99", "Invoice 2024-01-01 - 2024-01-31",
    "ref 550e8400-e29b-41d4-a716-446655440000", "stock_level 5", "call 555-123-4567",
])
def test_ordinary_free_text_passes(text):
    message = parse_message("charge_requested", {**BASE, **CHARGE, "description": text,
                                                 "metadata": {"k": text}})
    assert isinstance(message, ChargeRequested) and message.description == text


def test_a_valid_message_has_no_stored_replacement():
    # Given a message invalid for another reason only  /  Then the kwargs are stored as usual
    assert _refused("charge_requested", {"amount": 1.5, "currency": "usd"}).stored_payload is None


# ---- metadata within Stripe's rules ------------------------------------------------------


@pytest.mark.parametrize("key", ["a[b]", "items[0]", "x]", "[y"])
def test_metadata_keys_with_square_brackets_are_refused(key):
    error = _invalid("charge_requested", **CHARGE, metadata={key: "v"})
    assert "metadata" in error


def test_metadata_up_to_stripes_limits_passes():
    # Given Stripe's 50 keys less ours, keys of 40 characters and values of 500
    room = 50 - len(RESERVED_METADATA_KEYS)
    metadata = {f"{i:02d}".ljust(40, "k"): "v" * 500 for i in range(room)}
    # Then the metadata is accepted, and one key more is not
    message = parse_message("charge_requested", {**BASE, **CHARGE, "metadata": metadata})
    assert isinstance(message, ChargeRequested) and len(message.metadata or {}) == room
    _invalid("charge_requested", **CHARGE, metadata={**metadata, "one-more": "v"})


# ---- size and error bounds ---------------------------------------------------------------


def test_a_message_over_the_size_limit_is_refused_with_its_size_only():
    # Given a message of 100 KiB of description
    kwargs = {**BASE, **CHARGE, "description": "d" * 100 * 1024}
    # When checked against a 64 KiB limit
    with pytest.raises(InvalidMessage) as info:
        check_size(kwargs, 64 * 1024)
    # Then the error gives the size and the limit, not the content; the ledger keeps a summary
    error = info.value
    assert "102" in error.message and "65536" in error.message
    assert "ddd" not in error.message
    assert error.stored_payload is not None and "ddd" not in json.dumps(error.stored_payload)


def test_a_message_within_the_size_limit_passes():
    check_size({**BASE, **CHARGE, "description": "d" * 60 * 1024}, 64 * 1024)


def test_the_size_counts_utf8_bytes():
    with pytest.raises(InvalidMessage):
        check_size({"description": "é" * 40_000}, 64 * 1024)  # 80 KB of UTF-8


def test_two_thousand_unknown_kwargs_make_a_short_error():
    # Given a message with 2,000 unknown kwargs of long names
    kwargs = {f"unknown_{i}_" + "x" * 200: i for i in range(2000)}
    # When parsed
    message = _invalid("charge_requested", **CHARGE, **kwargs)
    # Then the error lists the first MAX_PROBLEMS and counts the rest, in under 4 KiB
    assert len(message.encode()) <= MAX_ERROR_TEXT
    assert message.count("Extra inputs are not permitted") == MAX_PROBLEMS
    assert f"and {2000 - MAX_PROBLEMS} more problems" in message


def test_an_unknown_kwarg_named_like_a_card_number_is_not_echoed():
    message = _invalid("charge_requested", **CHARGE, **{"4242424242424242": 1})
    assert "4242424242424242" not in message and "[card number]" in message
