"""Idempotency keys (tasks/idempotency.py): generation 0 keeps the form it
always had, and no two distinct (event, generation, step) derive the same key. Pure."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.errors import InvalidMessage
from tasks.idempotency import MAX_IDEMPOTENCY_KEY, STEPS, idempotency_key
from tasks.messages import parse_message

steps = st.sampled_from(sorted(STEPS))
# Any text, ':' and 'g1'-like tails included, and long enough to need hashing.
event_ids = st.one_of(
    st.text(min_size=1, max_size=300),
    st.text(alphabet=":gpw0123456789-", min_size=1, max_size=30),
    st.builds(lambda a, n: f"{a}:g{n}", st.text(min_size=1, max_size=20), st.integers(1, 99)),
)
generations = st.integers(min_value=1, max_value=10**6)


def test_generation_zero_keeps_the_form_of_every_earlier_release():
    # Events in flight across an upgrade must send the very key they were first sent with
    assert idempotency_key("order-7", "charge") == "pw:order-7:charge"
    assert idempotency_key("order-7:g1", "charge", 0) == "pw:order-7:g1:charge"
    long_id = "x" * 300
    assert idempotency_key(long_id, "charge").startswith("pw:sha256:")
    assert idempotency_key(long_id, "charge").endswith(":g0:charge")


def test_the_collision_of_the_issue_is_gone():
    # Generation 1 of "order-7" and generation 0 of "order-7:g1" used to share a key
    assert idempotency_key("order-7", "charge", 1) == "pwg:1:order-7:charge"
    assert idempotency_key("order-7", "charge", 1) != idempotency_key("order-7:g1", "charge", 0)
    # The legacy form of a generation started before, kept for its resumed writes, is the
    # ambiguous one
    assert idempotency_key("order-7", "charge", 1, legacy=True) == "pw:order-7:g1:charge"


@given(event_ids, steps, event_ids, generations, steps)
def test_no_generation_zero_key_equals_a_later_generation_key(e0, s0, e1, g1, s1):
    assert idempotency_key(e0, s0, 0) != idempotency_key(e1, s1, g1)


@given(event_ids, generations, steps, event_ids, generations, steps)
def test_later_generation_keys_differ_for_distinct_event_generation_and_step(e, g, s, e2, g2, s2):
    if (e, g, s) != (e2, g2, s2):
        assert idempotency_key(e, s, g) != idempotency_key(e2, s2, g2)


@given(event_ids, steps, event_ids, steps)
def test_generation_zero_keys_differ_for_distinct_event_and_step(e, s, e2, s2):
    # Hashed keys aside (event ids over 240 characters: messages allow 200), a generation-0
    # key ends in ":{step}" and steps contain no ':'
    if (e, s) != (e2, s2) and len(e) <= 200 and len(e2) <= 200:
        assert idempotency_key(e, s) != idempotency_key(e2, s2)


@given(event_ids, st.integers(min_value=0, max_value=10**6), steps)
def test_every_key_fits_stripe_and_is_deterministic(e, g, s):
    key = idempotency_key(e, s, g)
    assert len(key) <= MAX_IDEMPOTENCY_KEY
    assert key == idempotency_key(e, s, g)


def test_generation_is_a_metadata_key_of_payworkers_own():
    # A new generation puts `generation` on what it creates: a message may not set it, and
    # Stripe's 50 keys leave 47 to the app
    base = {"event_id": "e1", "user_id": "u1", "amount": 1000, "currency": "usd"}
    with pytest.raises(InvalidMessage, match="reserved"):
        parse_message("charge_requested", {**base, "metadata": {"generation": "2"}})
    many = {f"k{i}": "v" for i in range(47)}
    assert parse_message("charge_requested", {**base, "metadata": many})
    with pytest.raises(InvalidMessage):
        parse_message("charge_requested", {**base, "metadata": {**many, "k47": "v"}})
