"""Sealing keys of their own (core/settings.py, tasks/sealing.py): PAYWORKER_SEAL_KEYS,
the first seals and all open; tokens sealed under the old derivation (the Stripe key or
PAYWORKER_SEAL_KEY) still open once the old secret is listed. Pure: no services."""

from __future__ import annotations

import pytest

from core.errors import ConfigurationFault, PermanentError
from core.settings import Settings
from tasks.resources import build_sealer
from tasks.sealing import TokenSealer

TOKEN = "tok_1Nv0SECRETabcd9876"
TEST_KEY = "sk_test_payworker_sealing_0123456789"
LIVE_KEY = "sk_live_payworker_sealing_0123456789"
NEW_KEY = "n3w-seal-key_Zq8v0yQ2C1w4lQm0rT5uXbE9aFhJkP"
NEWER_KEY = "newer-seal-key_8f1c2d3e4a5b6c7d8e9f0a1b2c3d4e5f"


def settings(**env: str) -> Settings:
    """Settings from exactly these variables (whatever the environment of the run holds)."""
    names = ("STRIPE_API_KEY", "STRIPE_API_BASE", "PAYWORKER_SEAL_KEYS", "PAYWORKER_SEAL_KEY")
    return Settings(**{name: env.get(name) for name in names})  # type: ignore[arg-type]


def test_a_token_sealed_under_the_stripe_key_opens_with_the_new_keys_listing_it():
    # Given a token sealed by an earlier release: key derived from the Stripe key
    before = settings(STRIPE_API_KEY=TEST_KEY)
    sealed = build_sealer(before).seal(TOKEN)
    # When the Stripe key is rotated and PAYWORKER_SEAL_KEYS lists a new key, then the old
    after = settings(STRIPE_API_KEY="sk_test_rotated_key_99999999",
                     PAYWORKER_SEAL_KEYS=f"{NEW_KEY}, {TEST_KEY}")
    sealer = build_sealer(after)
    # Then the old token opens, and a new one is sealed under the new key alone
    assert sealer.unseal(sealed) == TOKEN
    assert TokenSealer(NEW_KEY).unseal(sealer.seal(TOKEN)) == TOKEN
    with pytest.raises(PermanentError):
        TokenSealer(TEST_KEY).unseal(sealer.seal(TOKEN))


def test_a_token_sealed_under_payworker_seal_key_opens_once_that_key_is_listed():
    sealed = build_sealer(settings(STRIPE_API_KEY=TEST_KEY, PAYWORKER_SEAL_KEY="old-secret"))
    token = sealed.seal(TOKEN)
    listed = settings(STRIPE_API_KEY=TEST_KEY, PAYWORKER_SEAL_KEYS=f"{NEW_KEY},old-secret")
    assert build_sealer(listed).unseal(token) == TOKEN
    # and without it, it does not open: the re-drive declares the event dead
    alone = settings(STRIPE_API_KEY=TEST_KEY, PAYWORKER_SEAL_KEYS=NEW_KEY)
    with pytest.raises(PermanentError) as unopened:
        build_sealer(alone).unseal(token)
    assert unopened.value.code == "token_unrecoverable"


def test_rotation_puts_the_new_key_first_and_keeps_the_old_ones_opening():
    token = build_sealer(settings(PAYWORKER_SEAL_KEYS=NEW_KEY)).seal(TOKEN)
    rotated = build_sealer(settings(PAYWORKER_SEAL_KEYS=f"{NEWER_KEY},{NEW_KEY}"))
    assert rotated.unseal(token) == TOKEN
    assert TokenSealer(NEWER_KEY).unseal(rotated.seal(TOKEN)) == TOKEN


def test_precedence_seal_keys_then_seal_key_then_the_stripe_key():
    assert settings(STRIPE_API_KEY=TEST_KEY).seal_secrets == [TEST_KEY]
    assert settings(STRIPE_API_KEY=TEST_KEY, PAYWORKER_SEAL_KEY="one").seal_secrets == ["one"]
    both = settings(STRIPE_API_KEY=TEST_KEY, PAYWORKER_SEAL_KEY="one",
                    PAYWORKER_SEAL_KEYS=f" {NEW_KEY} ,, two ")
    assert both.seal_secrets == [NEW_KEY, "two"]
    assert settings().seal_secrets == []


@pytest.mark.parametrize("env", [
    {"STRIPE_API_KEY": LIVE_KEY},
    {"STRIPE_API_KEY": LIVE_KEY, "PAYWORKER_SEAL_KEY": NEW_KEY},
    {"STRIPE_API_KEY": "rk_live_restricted_0123456789"},
])
def test_a_live_stripe_key_requires_seal_keys(env):
    problems = settings(**env).seal_key_problems()
    assert problems and "PAYWORKER_SEAL_KEYS is not set" in problems[0]
    with pytest.raises(ConfigurationFault):
        build_sealer(settings(**env))


def test_a_blank_variable_counts_as_unset():
    # docker-compose passes `${PAYWORKER_SEAL_KEYS:-}` as an empty string
    blank = settings(STRIPE_API_KEY=TEST_KEY, PAYWORKER_SEAL_KEYS="", PAYWORKER_SEAL_KEY=" ")
    assert blank.seal_secrets == [TEST_KEY] and blank.seal_key_problems() == []


@pytest.mark.parametrize(("keys", "problem"), [
    ("short-key", "fewer than 32"),
    (" , ", "lists no key"),
    (f"{LIVE_KEY},{NEW_KEY}", "is the Stripe key"),
])
def test_unusable_seal_keys_are_refused(keys, problem):
    problems = settings(STRIPE_API_KEY=LIVE_KEY, PAYWORKER_SEAL_KEYS=keys).seal_key_problems()
    assert any(problem in p for p in problems), problems


def test_a_live_key_with_seal_keys_of_its_own_is_accepted():
    live = settings(STRIPE_API_KEY=LIVE_KEY, PAYWORKER_SEAL_KEYS=f"{NEW_KEY},{LIVE_KEY}")
    assert live.seal_key_problems() == []
    # the old Stripe key may stay listed as an opening key
    assert build_sealer(live).unseal(TokenSealer(LIVE_KEY).seal(TOKEN)) == TOKEN
