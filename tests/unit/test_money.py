"""Stripe's amount rules (tasks.money), checked before any Stripe call. Pure: no services."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import InvalidMessage, PermanentError
from tasks.messages import parse_message
from tasks.money import (
    MAX_AMOUNT,
    MINIMUMS,
    MULTIPLE_OF_100,
    SUPPORTED,
    THREE_DECIMAL,
    ZERO_DECIMAL,
    check_charge_amount,
)

# The currencies the contract names as having a known minimum.
CONTRACT_MINIMUMS = {"usd": 50, "eur": 50, "gbp": 30, "cad": 50, "aud": 50, "jpy": 50}
PLAIN = sorted(SUPPORTED - THREE_DECIMAL - MULTIPLE_OF_100)


def _code(amount: int, currency: str) -> str | None:
    try:
        check_charge_amount(amount, currency)
    except PermanentError as exc:
        return exc.code
    return None


def test_currency_tables_match_stripe():
    # Given the currency tables of DESIGN.md (checked against Stripe's documentation)
    # Then the code holds exactly those, all of them supported
    assert set("bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split()) \
        == ZERO_DECIMAL
    assert {"bhd", "jod", "kwd", "omr", "tnd"} == THREE_DECIMAL
    assert {"isk"} == MULTIPLE_OF_100
    assert ZERO_DECIMAL | THREE_DECIMAL | MULTIPLE_OF_100 <= SUPPORTED
    assert MAX_AMOUNT == 99_999_999
    assert all(c == c.lower() and len(c) == 3 for c in SUPPORTED)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_amount_between_minimum_and_maximum_passes(data):
    # Given a supported currency without a divisibility rule, and an amount in its range
    currency = data.draw(st.sampled_from(PLAIN), label="currency")
    amount = data.draw(st.integers(MINIMUMS.get(currency, 1), MAX_AMOUNT), label="amount")
    # When it is checked  /  Then it passes
    check_charge_amount(amount, currency)


@pytest.mark.parametrize(("currency", "minimum"), sorted(CONTRACT_MINIMUMS.items()))
def test_contract_minimums(currency, minimum):
    # Given a currency whose minimum the contract requires us to know
    # Then one unit below it is amount_too_small and the minimum itself passes
    assert MINIMUMS[currency] == minimum
    assert _code(minimum - 1, currency) == "amount_too_small"
    assert _code(minimum, currency) is None


@given(currency=st.sampled_from(sorted(SUPPORTED)),
       excess=st.integers(min_value=1, max_value=10**40))
def test_above_eight_digits_is_amount_too_large(currency, excess):
    # Given any supported currency and an amount above 99,999,999 (huge ones included)
    # Then the check fails amount_too_large (whatever the currency's other rules)
    assert _code(MAX_AMOUNT + excess, currency) == "amount_too_large"


@given(amount=st.integers(max_value=0), currency=st.sampled_from(sorted(SUPPORTED)))
def test_non_positive_amount_is_invalid_message(amount, currency):
    # Given a zero or negative amount  /  Then it is invalid_message, never a Stripe code
    with pytest.raises(InvalidMessage):
        check_charge_amount(amount, currency)


@pytest.mark.parametrize("currency", ["xyz", "xts", "abc"])
def test_unsupported_currency(currency):
    # Given a well-formed code Stripe does not charge in  /  Then unsupported_currency
    assert _code(1000, currency) == "unsupported_currency"


@given(currency=st.sampled_from(sorted(THREE_DECIMAL)), tens=st.integers(1, MAX_AMOUNT // 10),
       unit=st.integers(1, 9))
def test_three_decimal_amounts_must_end_in_zero(currency, tens, unit):
    # Given a three-decimal currency
    # Then multiples of 10 pass and anything else is invalid_message
    check_charge_amount(tens * 10, currency)
    with pytest.raises(InvalidMessage):
        check_charge_amount(tens * 10 + unit if tens * 10 + unit <= MAX_AMOUNT else unit,
                            currency)


@given(hundreds=st.integers(1, MAX_AMOUNT // 100), rest=st.integers(1, 99))
def test_isk_amounts_must_be_whole_kronur(hundreds, rest):
    # Given ISK  /  Then multiples of 100 pass and anything else is invalid_message
    check_charge_amount(hundreds * 100, "isk")
    with pytest.raises(InvalidMessage):
        check_charge_amount(rest, "isk")
    if hundreds * 100 + rest <= MAX_AMOUNT:
        with pytest.raises(InvalidMessage):
            check_charge_amount(hundreds * 100 + rest, "isk")


def test_examples_from_the_contract():
    # The contract's own examples
    assert _code(49, "usd") == "amount_too_small"
    assert _code(49, "jpy") == "amount_too_small"
    assert _code(29, "gbp") == "amount_too_small"
    assert _code(100_000_000, "usd") == "amount_too_large"
    assert _code(99_999_999, "usd") is None
    with pytest.raises(InvalidMessage):
        check_charge_amount(1005, "bhd")
    with pytest.raises(InvalidMessage):
        check_charge_amount(150, "isk")


@given(amount=st.floats(allow_nan=True, allow_infinity=True) | st.booleans()
       | st.decimals(allow_nan=False, allow_infinity=False).map(str))
def test_floats_bools_and_numeric_strings_never_pass_the_message_model(amount):
    # Given a charge whose amount is a float (even 100.0), a bool or a numeric string
    kwargs = {"event_id": "e", "user_id": "u", "amount": amount, "currency": "usd"}
    # Then the message model rejects it before any money rule is applied
    with pytest.raises(InvalidMessage):
        parse_message("charge_requested", kwargs)
