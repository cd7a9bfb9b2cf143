"""The input limits' settings (core.settings): PAYWORKER_MAX_AMOUNT,
PAYWORKER_USER_CHARGE_LIMIT, PAYWORKER_MAX_MESSAGE_BYTES, and the refusal of a live key sent
to another API base. A malformed value stops the worker with an error naming the variable.
Pure: no services."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from core.settings import Settings

LIVE_KEY = "sk_live_SECRETLIVEKEY123"


def _settings(**env: str) -> Settings:
    return Settings(**env)  # type: ignore[arg-type]


def test_limits_are_off_by_default():
    settings = _settings()
    assert settings.max_amount == {}
    assert settings.user_charge_limit is None
    assert settings.max_message_bytes == 64 * 1024


@pytest.mark.parametrize(("value", "expected"), [
    ("usd:50000,eur:50000", {"usd": 50000, "eur": 50000}),
    (" USD : 100 , jpy:5000 ,", {"usd": 100, "jpy": 5000}),
    ("", {}),
])
def test_max_amount_is_read_per_currency(value, expected):
    assert _settings(PAYWORKER_MAX_AMOUNT=value).max_amount == expected


@pytest.mark.parametrize("value", [
    "usd50000", "usd:", "usd:-5", "usd:0", "usd:1.5", "dollar:5", "usd:100000000",
    "usd:1,usd:2", "usd:5;eur:5",
])
def test_a_malformed_max_amount_is_refused_naming_the_variable(value):
    with pytest.raises(ValidationError) as info:
        _settings(PAYWORKER_MAX_AMOUNT=value)
    assert "PAYWORKER_MAX_AMOUNT" in str(info.value)


@pytest.mark.parametrize(("value", "expected"), [("3", 3), ("", None)])
def test_user_charge_limit(value, expected):
    assert _settings(PAYWORKER_USER_CHARGE_LIMIT=value).user_charge_limit == expected


@pytest.mark.parametrize("value", ["0", "-1", "many", "1.5"])
def test_a_malformed_user_charge_limit_is_refused(value):
    with pytest.raises(ValidationError) as info:
        _settings(PAYWORKER_USER_CHARGE_LIMIT=value)
    assert "PAYWORKER_USER_CHARGE_LIMIT" in str(info.value)


@pytest.mark.parametrize("value", ["100", "big"])
def test_a_too_small_or_malformed_message_size_is_refused(value):
    with pytest.raises(ValidationError) as info:
        _settings(PAYWORKER_MAX_MESSAGE_BYTES=value)
    assert "PAYWORKER_MAX_MESSAGE_BYTES" in str(info.value)


@pytest.mark.parametrize("key", [LIVE_KEY, "rk_live_SECRETRESTRICTED9"])
def test_a_live_key_with_another_api_base_is_refused_without_echoing_it(key):
    # Given a live key and STRIPE_API_BASE pointing elsewhere
    with pytest.raises(ValidationError) as info:
        _settings(STRIPE_API_KEY=key, STRIPE_API_BASE="http://127.0.0.1:8420")
    # Then the settings are refused, saying why, and the error does not show the key
    text = str(info.value)
    assert "STRIPE_API_BASE" in text and "live" in text
    assert "SECRET" not in text


def test_a_live_key_alone_or_a_test_key_with_an_api_base_is_fine():
    assert _settings(STRIPE_API_KEY=LIVE_KEY).stripe_api_base is None
    assert _settings(STRIPE_API_KEY=LIVE_KEY, STRIPE_API_BASE="").stripe_api_base == ""
    test = _settings(STRIPE_API_KEY="sk_test_abc", STRIPE_API_BASE="http://127.0.0.1:8420")
    assert test.stripe_api_base == "http://127.0.0.1:8420"


def test_refused_settings_never_echo_the_environment(monkeypatch):
    # Given a key and a database password in the environment, and a malformed setting
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_SECRETINENV")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:SECRETPASSWORD@h/db")
    monkeypatch.setenv("PAYWORKER_STRIPE_RATE", "0.5")
    # When the settings are read  /  Then the error shows neither
    with pytest.raises(ValidationError) as info:
        Settings()
    assert "SECRET" not in str(info.value)
