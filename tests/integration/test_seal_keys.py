"""Sealing keys of their own, with real workers: a live Stripe key without
PAYWORKER_SEAL_KEYS stops the worker at start; a card token sealed by a worker under the
old derivation (the Stripe key) opens after the Stripe key is rotated, once
PAYWORKER_SEAL_KEYS lists the old secret after the new key, and only then."""

from __future__ import annotations

import subprocess
import sys
import uuid

from tests.conftest import ROOT, worker_env
from tests.integration.test_operator_cli import VISA, run_cli, sender

OLD_STRIPE_KEY = "sk_test_payworker_tests"  # the suite's key (tests/conftest.py)
ROTATED_STRIPE_KEY = "sk_test_rotated_after_a_leak_0001"
NEW_SEAL_KEY = "seal-key-of-its-own_4f0c9a7e2b1d8c6a5e3f"


def test_a_worker_with_a_live_stripe_key_and_no_seal_keys_refuses_to_start(
    database_url, broker_url, stripe_fake
):
    queue = f"payments_live_{uuid.uuid4().hex[:8]}"
    env = worker_env(database_url, broker_url, stripe_fake.url, queue,
                     STRIPE_API_KEY="sk_live_payworker_refusal_test_0001")
    env.pop("PAYWORKER_SEAL_KEYS", None)
    # A live key never goes with STRIPE_API_BASE (a refusal of its own); this worker never
    # reaches Stripe anyway
    env.pop("STRIPE_API_BASE", None)
    # A worker that started would consume until the timeout kills it, and fail the test
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker", "worker", "-Q", queue,
         "--without-mingle", "--without-gossip", "--concurrency", "1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "refusing to start" in output and "PAYWORKER_SEAL_KEYS is not set" in output, output
    assert " ready." not in output
    assert "sk_live_payworker_refusal_test_0001" not in output  # the key is masked


def test_a_token_sealed_under_the_old_stripe_key_opens_after_the_rotation(
    start_worker, upstream, wait_for, stripe_fake, ids
):
    # Given two card events that died at card_attaching under a worker whose tokens are
    # sealed with the key derived from its Stripe key (no PAYWORKER_SEAL_KEYS)
    old = start_worker(concurrency=2, PAYWORKER_MAX_ATTEMPTS="2")
    send = sender(upstream, old.queue)
    user, reg = ids("user"), ids("reg")
    send("user_registered", event_id=reg, user_id=user, email="seal@example.com")
    assert wait_for(reg)[reg]["status"] == "succeeded"
    stripe_fake.inject(method="POST", path="^/v1/customers/[^/]+/sources$", status=500,
                       name="attach-down")
    cards = [ids("card-a"), ids("card-b")]
    try:
        for event_id in cards:
            send("card_token_received", event_id=event_id, user_id=user,
                 token=stripe_fake.create_card_token(VISA))
        rows = wait_for(*cards, timeout=30)
    finally:
        stripe_fake.clear_faults()
    for event_id in cards:
        assert rows[event_id]["status"] == "dead", rows[event_id]
        assert rows[event_id]["recovery_point"] == "card_attaching"
        assert rows[event_id]["sealed_token"], "the token must be kept sealed for a replay"
    old.stop()

    # When the Stripe key is rotated, and the new worker lists a key of its own first and
    # the old Stripe key after it
    both = start_worker(concurrency=2, queue=old.queue, STRIPE_API_KEY=ROTATED_STRIPE_KEY,
                        PAYWORKER_SEAL_KEYS=f"{NEW_SEAL_KEY},{OLD_STRIPE_KEY}")
    replayed = run_cli(both.env, "replay", cards[0])
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    # Then the token opens and the card is attached
    row = wait_for(cards[0], timeout=30)[cards[0]]
    assert row["status"] == "succeeded", row
    assert row["sealed_token"] is None
    both.stop()

    # When a worker lists only the new key
    new_only = start_worker(concurrency=2, queue=old.queue, STRIPE_API_KEY=ROTATED_STRIPE_KEY,
                            PAYWORKER_SEAL_KEYS=NEW_SEAL_KEY)
    replayed = run_cli(new_only.env, "replay", cards[1])
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    # Then the token does not open: the event is dead again, and says why
    row = wait_for(cards[1], timeout=30)[cards[1]]
    assert row["status"] == "dead", row
    assert "card token needed to resume this event cannot be recovered" in (
        row["error_message"] or ""), row
    assert ROTATED_STRIPE_KEY not in new_only.log() and NEW_SEAL_KEY not in new_only.log()
