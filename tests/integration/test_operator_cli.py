"""Operators without SQL: find a dead event, see why it died, replay it, and read the status,
all through the `payworker` command against a real worker, Postgres and the Stripe fake."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from typing import Any

from sqlalchemy import text

from tasks.gateway import StripeGateway
from tests.conftest import ROOT, event_rows

VISA = "4242424242424242"
DECLINED_AT_CHARGE = "4000000000000341"  # attaches, then every charge of it is declined
PAYWORKER = os.path.join(os.path.dirname(sys.executable), "payworker")


def run_cli(env: dict[str, str], *args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    """`payworker ARGS` as an operator runs it, with the worker's environment."""
    return subprocess.run([PAYWORKER, *args], cwd=ROOT, env={**env, **extra_env},
                          capture_output=True, text=True, timeout=60)


def registered_user_with_card(send: Any, wait_for: Any, stripe_fake: Any, ids: Any,
                              number: str = VISA) -> tuple[str, str]:
    """A user with a customer and one default card; returns (user_id, customer_id)."""
    user, reg, tok = ids("user"), ids("reg"), ids("tok")
    send("user_registered", event_id=reg, user_id=user, email="op@example.com")
    send("card_token_received", event_id=tok, user_id=user,
         token=stripe_fake.create_card_token(number))
    rows = wait_for(reg, tok)
    assert rows[reg]["status"] == rows[tok]["status"] == "succeeded", rows
    return user, rows[reg]["result"]["customer_id"]


def sender(upstream: Any, queue: str) -> Any:
    def send(message_type: str, **kwargs: Any) -> None:
        upstream.send_task(f"payments.{message_type}", kwargs=kwargs, queue=queue)
    return send


def charge_posts(stripe_fake: Any, after_seq: int) -> list[dict[str, Any]]:
    return [r for r in stripe_fake.requests(method="POST", path="/v1/payment_intents")
            if r["seq"] > after_seq]


def last_seq(stripe_fake: Any) -> int:
    return max((r["seq"] for r in stripe_fake.requests()), default=0)


def test_dead_charge_is_found_shown_and_replayed_with_the_same_key(
    start_worker, upstream, wait_for, engine, stripe_fake, ids
):
    # Given a worker that gives up after 2 transient failures, and a user with a card
    worker = start_worker(concurrency=2, PAYWORKER_MAX_ATTEMPTS="2")
    send = sender(upstream, worker.queue)
    user, customer = registered_user_with_card(send, wait_for, stripe_fake, ids)
    # and Stripe answering every charge with a 500
    stripe_fake.inject(method="POST", path="^/v1/payment_intents$", status=500, name="charges-down")
    chg = ids("chg")
    before = last_seq(stripe_fake)
    try:
        send("charge_requested", event_id=chg, user_id=user, amount=1500, currency="usd")
        row = wait_for(chg, timeout=25)[chg]
    finally:
        stripe_fake.clear_faults()
    assert row["status"] == "dead" and row["error_code"] == "retries_exhausted", row

    # When the operator looks for dead events
    listed = run_cli(worker.env, "events", "list", "--status", "dead", "--since", "10m", "--json")
    # Then the event is there, with why it died
    assert listed.returncode == 0, listed.stderr
    found = {e["event_id"]: e for e in json.loads(listed.stdout)}
    assert found[chg]["status"] == "dead"
    assert found[chg]["error_code"] == "retries_exhausted"
    assert found[chg]["type"] == "charge_requested" and found[chg]["user_id"] == user
    assert found[chg]["attempts"] >= 2
    # and the human table shows it too
    table = run_cli(worker.env, "events", "list", "--status", "dead", "--type",
                    "charge_requested", COLUMNS="250")
    assert table.returncode == 0, table.stderr
    assert chg in table.stdout and "retries_exhausted" in table.stdout
    # and `events show` says what the last error was
    shown = run_cli(worker.env, "events", "show", chg)
    assert shown.returncode == 0, shown.stderr
    event = json.loads(shown.stdout)
    assert event["recovery_point"] == "intent_creating"
    assert "gave up after 2 transient failures" in event["error_message"]
    assert "500" in event["last_error"] or "charges-down" in event["last_error"]

    # When Stripe is healthy again and the operator replays the event
    replayed = run_cli(worker.env, "replay", chg)
    # Then it is re-driven from its recovery point with the same keys, and succeeds
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert f"replayed {chg}" in replayed.stdout
    assert "same idempotency keys" in replayed.stdout and f"pw:{chg}:" in replayed.stdout
    row = wait_for(chg, timeout=20)[chg]
    assert row["status"] == "succeeded", row
    assert row["generation"] == 0 and row["transient_failures"] == 0
    # with exactly one charge on Stripe, and every POST of the event under one key
    posts = charge_posts(stripe_fake, before)
    assert posts and {p["idempotency_key"] for p in posts} == {f"pw:{chg}:payment_intent"}
    assert [p["status"] for p in posts].count(200) == 1
    charges = stripe_fake.list_charges(customer)
    assert [c["id"] for c in charges] == [row["result"]["charge_id"]]
    with engine.connect() as conn:
        charge = conn.execute(text("SELECT * FROM charges WHERE event_id = :e"),
                              {"e": chg}).mappings().one()
    assert charge["status"] == "succeeded"
    assert charge["stripe_charge_id"] == row["result"]["charge_id"]


def test_replay_refuses_succeeded_unknown_and_unforced_failed_events(
    worker, publish, wait_for, engine, ids
):
    # Given a succeeded event and an id nobody knows
    reg, unknown = ids("reg"), ids("nope")
    publish("user_registered", event_id=reg, user_id=ids("user"), email="r@example.com")
    before = wait_for(reg)[reg]
    assert before["status"] == "succeeded"
    # When the operator replays them, even with --force
    done = run_cli(worker.env, "replay", "--force", "--reason", "test", reg, unknown)
    # Then both are refused, one line each, with a non-zero exit code
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"refused {reg}: succeeded" in done.stdout
    assert f"refused {unknown}: unknown event" in done.stdout
    # and the succeeded event is untouched
    after = event_rows(engine, [reg])[reg]
    assert after["status"] == "succeeded" and after["updated_at"] == before["updated_at"]


def test_forced_replay_of_a_declined_charge_is_a_new_generation_with_new_keys(
    worker, upstream, wait_for, engine, stripe_fake, ids
):
    # Given a charge that Stripe declined: a failed event with a failed charges row
    send = sender(upstream, worker.queue)
    user, customer = registered_user_with_card(send, wait_for, stripe_fake, ids,
                                               number=DECLINED_AT_CHARGE)
    chg = ids("chg")
    send("charge_requested", event_id=chg, user_id=user, amount=2500, currency="eur")
    first = wait_for(chg)[chg]
    assert first["status"] == "failed" and first["error_code"] == "card_declined", first
    first_charge_id = first["result"]["charge_id"]
    before = last_seq(stripe_fake)

    # When the operator replays it without --force
    plain = run_cli(worker.env, "replay", chg)
    # Then it is refused: failed is a business outcome
    assert plain.returncode == 1
    assert f"refused {chg}: failed (card_declined)" in plain.stdout
    assert event_rows(engine, [chg])[chg]["generation"] == 0

    # When the operator forces it, saying why
    forced = run_cli(worker.env, "replay", "--force", "--reason", "customer asked to retry", chg,
                     USER="ada", LOGNAME="ada")
    # Then the command says loudly that this is a new generation with new keys
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert "generation 1" in forced.stdout and "NEW idempotency keys" in forced.stdout
    assert f"pwg:1:{chg}:" in forced.stdout and "Stripe acts again" in forced.stdout
    # and Stripe was asked first for a succeeded charge of the event (there was none)
    lookups = [r for r in stripe_fake.requests(method="GET", path="/v1/payment_intents")
               if r["seq"] > before]
    assert lookups, "Stripe was not asked before the new generation"
    # and the new generation charged the same card again, under the new key only, its
    # number in the charge's metadata
    row = wait_for(chg, timeout=20)[chg]
    assert row["generation"] == 1
    assert row["status"] == "failed" and row["error_code"] == "card_declined", row
    posts = charge_posts(stripe_fake, before)
    assert [p["idempotency_key"] for p in posts] == [f"pwg:1:{chg}:payment_intent"]
    on_stripe = {c["id"]: c for c in stripe_fake.list_charges(customer)}
    assert len(on_stripe) == 2
    assert on_stripe[row["result"]["charge_id"]]["metadata"]["generation"] == "1"
    assert "generation" not in on_stripe[first_charge_id]["metadata"]
    # and the ledger keeps the first generation's outcome, who replayed it and why, the
    # charges row the new one
    previous = row["progress"]["replays"]
    assert [(p["generation"], p["new_generation"]) for p in previous] == [(0, True)]
    assert previous[0]["error_code"] == "card_declined"
    assert previous[0]["charge"]["stripe_charge_id"] == first_charge_id
    assert (previous[0]["operator"], previous[0]["reason"]) == ("ada", "customer asked to retry")
    shown = json.loads(run_cli(worker.env, "events", "show", chg).stdout)
    assert shown["progress"]["replays"][0]["reason"] == "customer asked to retry"
    with engine.connect() as conn:
        charge = conn.execute(text("SELECT * FROM charges WHERE event_id = :e"),
                              {"e": chg}).mappings().one()
    assert charge["status"] == "failed" and charge["failure_code"] == "card_declined"
    assert charge["stripe_charge_id"] == row["result"]["charge_id"] != first_charge_id


def test_forced_replay_without_a_reason_is_refused_before_anything(
    worker, upstream, wait_for, engine, stripe_fake, ids
):
    # Given a declined charge
    send = sender(upstream, worker.queue)
    user, _ = registered_user_with_card(send, wait_for, stripe_fake, ids,
                                       number=DECLINED_AT_CHARGE)
    chg = ids("chg")
    send("charge_requested", event_id=chg, user_id=user, amount=2500, currency="eur")
    failed = wait_for(chg)[chg]
    before = last_seq(stripe_fake)

    # When the operator forces it without --reason, or with a blank one
    for args in ([], ["--reason", "  "]):
        done = run_cli(worker.env, "replay", "--force", *args, chg)
        # Then it is refused with exit code 2 and a message that says what is missing
        assert done.returncode == 2, done.stdout + done.stderr
        assert "--reason" in done.stderr and "replay --force needs" in done.stderr
    # and nothing happened: not on Stripe, not in the ledger
    assert last_seq(stripe_fake) == before
    assert event_rows(engine, [chg])[chg] == failed


def test_forced_replay_is_refused_when_stripe_holds_a_succeeded_charge_of_the_event(
    worker, upstream, wait_for, engine, stripe_fake, ids
):
    # Given a declined charge, failed in the ledger, and a succeeded charge of the same
    # event on Stripe (made with another card, as a lost outcome would leave it)
    send = sender(upstream, worker.queue)
    user, customer = registered_user_with_card(send, wait_for, stripe_fake, ids,
                                               number=DECLINED_AT_CHARGE)
    chg = ids("chg")
    send("charge_requested", event_id=chg, user_id=user, amount=2500, currency="eur")
    failed = wait_for(chg)[chg]
    assert failed["status"] == "failed", failed
    gateway = StripeGateway.build(worker.env["STRIPE_API_KEY"], api_base=stripe_fake.url,
                                  timeout=5, network_retries=0)
    token = gateway.attach_card(f"test:{chg}:attach", customer_id=customer,
                                token=stripe_fake.create_card_token(VISA), metadata={})
    assert token.card_id is not None
    paid = gateway.create_payment_intent(
        f"test:{chg}:payment_intent", customer_id=customer, payment_method=token.card_id,
        amount=2500, currency="eur", description=None, metadata={"event_id": chg, "user_id": user})
    assert paid.status == "succeeded"
    before = last_seq(stripe_fake)

    # When the operator forces a new generation
    done = run_cli(worker.env, "replay", "--force", "--reason", "customer says unpaid",
                   "--operator", "bob", chg)
    # Then it is refused, naming the charge, and nothing was charged or changed
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"refused {chg}: Stripe holds a succeeded PaymentIntent of this event" in done.stdout
    assert paid.intent_id in done.stdout
    assert charge_posts(stripe_fake, before) == []
    assert event_rows(engine, [chg])[chg] == failed


def test_status_shows_counts_by_type_and_status_retries_due_and_the_oldest_event(
    worker, engine
):
    # Given ledger rows of a type of their own, on a queue no sweeper serves: two dead,
    # one failed, one waiting for a retry that is due, and the latter is very old
    probe = f"probe_{uuid.uuid4().hex[:8]}"
    queue = f"nobody_{probe}"
    rows = [("dead", 0), ("dead", 0), ("failed", 0), ("processing", 10)]
    ids = [f"{probe}-{n}" for n in range(len(rows))]
    with engine.begin() as conn:
        for event_id, (state, days) in zip(ids, rows, strict=True):
            conn.execute(text(
                "INSERT INTO payment_events (event_id, type, user_id, payload, payload_hash,"
                " status, recovery_point, progress, queue, created_at, next_attempt_at)"
                " VALUES (:e, :t, 'u', '{}', 'x', :s, 'started', '{}', :q,"
                " now() - make_interval(days => :d), now() - interval '1 second')"),
                {"e": event_id, "t": probe, "s": state, "q": queue, "d": days})
    try:
        # When the operator asks for the status, for scripts and for people
        as_json = run_cli(worker.env, "status", "--json")
        shown = run_cli(worker.env, "status", COLUMNS="200", FORCE_COLOR="1")
    finally:
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM payment_events WHERE type = :t"), {"t": probe})
    # Then the counts of that type are exact, and the global figures include them
    assert as_json.returncode == 0, as_json.stderr
    status = json.loads(as_json.stdout)
    assert status["counts"][probe] == {
        "received": 0, "processing": 1, "succeeded": 0, "failed": 1, "dead": 2,
        "action_required": 0}
    assert status["dead"] >= 2 and status["retry_due"] >= 1
    assert status["oldest_unfinished"]["event_id"] == ids[3]
    # and the table shows the same numbers, the dead count in red, and the oldest event
    assert shown.returncode == 0, shown.stderr
    plain = strip_ansi(shown.stdout)
    line = next(row for row in plain.splitlines() if probe in row)
    assert line.split()[1:] == ["0", "1", "0", "1", "2", "0", "4"], line
    assert "\x1b[1;31mdead: " in shown.stdout
    assert f"oldest unfinished: {ids[3]} ({probe}, processing, 10d00h old" in plain
    assert "retry due now: " in plain


def test_events_list_rejects_a_malformed_since_and_an_unknown_type(worker):
    for args in (["--since", "yesterday"], ["--type", "refund_issued"]):
        done = run_cli(worker.env, "events", "list", *args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)


def strip_ansi(text_: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text_)
