"""Authenticated messages against real workers: with PAYWORKER_MESSAGE_KEYS a signed message
runs (under the new key or the old one), anything else is refused before it is parsed or
claimed (nothing stored, nothing sent to Stripe), acked and dropped, logged without its
payload and counted in the metrics and in `payworker status`; payworker's own publishers
(the sweep's re-drives, `payworker replay`, `payworker publish`, the publisher helper) sign; and a
worker without keys says at start-up that messages are not authenticated."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from prometheus_client import CollectorRegistry, generate_latest, multiprocess

from core.signing import SIGNATURE_HEADER, KeyRing, MessageKey, sign_with
from tests.conftest import ROOT, WorkerProcess, event_rows
from worker.publisher import publish as publish_helper

PAYWORKER = os.path.join(os.path.dirname(sys.executable), "payworker")
NEW = MessageKey("k-new", b"n3w-secret-for-payworker-tests-0123456789")
OLD = MessageKey("k-old", b"0ld-secret-for-payworker-tests-9876543210")
STRANGER = MessageKey("k-other", b"a-key-the-workers-were-never-given-000000")
# The workers' ring: the new key signs, the old one still verifies (mid-rotation).
KEYS = f"{NEW.key_id}:{NEW.secret.decode()},{OLD.key_id}:{OLD.secret.decode()}"
REFUSED_LINE = "MESSAGE REFUSED: not authenticated, dropped"

pytestmark = pytest.mark.usefixtures("no_faults")


def send(app: Celery, queue: str, task: str, kwargs: dict[str, Any],
         signature: str | None = None, args: tuple[Any, ...] = ()) -> str:
    """Publish as an upstream app does, with `signature` in the payworker-signature header."""
    headers = {SIGNATURE_HEADER: signature} if signature is not None else {}
    return str(app.send_task(task, args=args, kwargs=kwargs, queue=queue, headers=headers).id)


def signed(key: MessageKey, task: str, kwargs: dict[str, Any]) -> str:
    return sign_with(key, task, kwargs)


def refusal_lines(worker: WorkerProcess) -> list[str]:
    return [line for line in worker.log().splitlines() if REFUSED_LINE in line]


def wait_until(predicate: Callable[[], Any], timeout: float, why: Callable[[], str]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(why())


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PAYWORKER, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


def status_refusals(env: dict[str, str]) -> dict[str, int]:
    done = run_cli(env, "status", "--json")
    assert done.returncode == 0, done.stderr
    by_reason: dict[str, int] = json.loads(done.stdout)["refused"]["by_reason"]
    return by_reason


def refused_metric(metrics_dir: Path, task: str, reason: str) -> float:
    """payworker_messages_refused_total{task, reason}, as `payworker metrics` serves it."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(metrics_dir))
    total = 0.0
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith("payworker_messages_refused_total{") and \
                f'task="{task}"' in line and f'reason="{reason}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(scope="module")
def keyed(start_worker: Callable[..., WorkerProcess]) -> WorkerProcess:
    """A worker with message keys that gives up after 2 transient failures."""
    return start_worker(concurrency=2, PAYWORKER_MESSAGE_KEYS=KEYS, PAYWORKER_MAX_ATTEMPTS="2")


@pytest.fixture
def metrics_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "metrics"
    path.mkdir()
    yield path


def test_only_signed_messages_run_and_the_others_are_refused_dropped_and_counted(
    start_worker, upstream, wait_for, engine, stripe_fake, ids, metrics_dir,
):
    # Given a worker holding the new and the old key, counting into its metrics directory
    worker = start_worker(concurrency=2, PAYWORKER_MESSAGE_KEYS=KEYS,
                          PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    q, task = worker.queue, "payments.user_registered"
    before = status_refusals(worker.env)

    def registration(name: str) -> dict[str, Any]:
        return {"event_id": ids(f"{name}-reg"), "user_id": ids(f"{name}-user"),
                "email": f"{name}-{ids('m')}@example.com"}

    # When it gets one registration signed with the new key and one with the old key
    fresh, rotated = registration("new"), registration("old")
    send(upstream, q, task, fresh, signed(NEW, task, fresh))
    send(upstream, q, task, rotated, signed(OLD, task, rotated))
    # and registrations that are unsigned, forged, signed with a key it does not hold,
    # tampered with after signing, signed under a malformed header, or carry positional
    # arguments beside signed kwargs
    refused = {reason: registration(reason) for reason in (
        "unsigned", "forged", "unknown_key", "tampered", "malformed", "positional_args")}
    send(upstream, q, task, refused["unsigned"])
    forged = MessageKey(NEW.key_id, b"guessed-secret-guessed-secret-guessed-0")
    send(upstream, q, task, refused["forged"], signed(forged, task, refused["forged"]))
    send(upstream, q, task, refused["unknown_key"],
         signed(STRANGER, task, refused["unknown_key"]))
    original = {**refused["tampered"], "email": "original@example.com"}
    send(upstream, q, task, refused["tampered"], signed(NEW, task, original))
    send(upstream, q, task, refused["malformed"], "k-new=" + "0" * 64)
    send(upstream, q, task, refused["positional_args"],
         signed(NEW, task, refused["positional_args"]), args=("extra",))

    # Then both signed registrations run
    rows = wait_for(fresh["event_id"], rotated["event_id"])
    assert {r["status"] for r in rows.values()} == {"succeeded"}, rows
    # and each other message is refused once, in a line without its payload
    lines = wait_until(lambda: len(refusal_lines(worker)) >= 6 and refusal_lines(worker), 30,
                       lambda: f"refusals not logged:\n{worker.log()[-3000:]}")
    time.sleep(1)  # nothing more comes: each is refused once
    assert len(refusal_lines(worker)) == 6, refusal_lines(worker)
    reasons = sorted(re.search(r"reason=(\w+)", line).group(1) for line in lines)
    assert reasons == sorted(["unsigned", "bad_signature", "unknown_key", "bad_signature",
                              "malformed", "positional_args"])
    assert all(f"task={task}" in line for line in lines)
    log = worker.log()
    for message in refused.values():
        masked = f"{message['event_id'][:3]}…{message['event_id'][-4:]}"
        assert f"masked_event_id={masked}" in log
        for value in message.values():
            assert value not in log, f"{value!r} from a refused message is in the log"
    # and none of them reached the ledger or Stripe
    assert event_rows(engine, [m["event_id"] for m in refused.values()]) == {}
    users = {m["user_id"] for m in refused.values()}
    assert not [c for c in stripe_fake.list_customers()
                if (c.get("metadata") or {}).get("user_id") in users]
    # and they are counted: in the worker's metrics and in `payworker status`
    assert refused_metric(metrics_dir, task, "bad_signature") == 2
    for reason in ("unsigned", "unknown_key", "malformed", "positional_args"):
        assert refused_metric(metrics_dir, task, reason) == 1, reason
    after = status_refusals(worker.env)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    assert delta == {"unsigned": 1, "bad_signature": 2, "unknown_key": 1, "malformed": 1,
                     "positional_args": 1}, delta
    shown = run_cli(worker.env, "status")
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"refused \(not authenticated\): \d+ today", shown.stdout), shown.stdout

    # When the worker stops (a warm shutdown gives unacked messages back to the broker)
    # and another one takes over its queue
    worker.stop()
    successor = start_worker(concurrency=2, queue=q, PAYWORKER_MESSAGE_KEYS=KEYS)
    last = registration("last")
    send(upstream, q, task, last, signed(NEW, task, last))
    assert wait_for(last["event_id"])[last["event_id"]]["status"] == "succeeded"
    time.sleep(1)
    # Then no refused message comes back: they were acked and dropped
    assert refusal_lines(successor) == []


def test_the_sweep_and_payworker_replay_publish_signed_redrives(
    keyed, upstream, wait_for, stripe_fake, ids,
):
    # Given a keyed worker, and a card token that arrives before its user's registration
    q = keyed.queue
    refused_before = len(refusal_lines(keyed))
    user, reg, tok = ids("user"), ids("reg"), ids("tok")
    card = {"event_id": tok, "user_id": user, "token": stripe_fake.create_card_token()}
    send(upstream, q, "payments.card_token_received", card,
         signed(NEW, "payments.card_token_received", card))
    time.sleep(1)
    registration = {"event_id": reg, "user_id": user, "email": "late@example.com"}
    send(upstream, q, "payments.user_registered", registration,
         signed(NEW, "payments.user_registered", registration))
    # When the sweep re-drives the waiting card
    rows = wait_for(reg, tok)
    # Then it runs, from a signed re-drive
    assert rows[tok]["status"] == "succeeded" and rows[tok]["attempts"] >= 2, rows[tok]

    # Given a charge that dies of Stripe 500s (its retries are re-drives too)
    stripe_fake.inject(method="POST", path="^/v1/payment_intents$", status=500, name="charges-down")
    chg = ids("chg")
    charge = {"event_id": chg, "user_id": user, "amount": 1500, "currency": "usd"}
    try:
        send(upstream, q, "payments.charge_requested", charge,
             signed(NEW, "payments.charge_requested", charge))
        assert wait_for(chg, timeout=30)[chg]["status"] == "dead"
    finally:
        stripe_fake.clear_faults()
    # When an operator replays it with the workers' keys
    replayed = run_cli(keyed.env, "replay", chg)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    # Then the re-drive it publishes runs
    assert wait_for(chg, timeout=30)[chg]["status"] == "succeeded"
    # and none of these re-drives was refused
    assert refusal_lines(keyed)[refused_before:] == []


def test_payworker_publish_and_the_publisher_helper_sign_with_the_first_key(
    keyed, upstream, wait_for, engine, ids,
):
    q = keyed.queue
    # When `payworker publish` runs with the workers' keys
    by_cli = {"event_id": ids("cli"), "user_id": ids("user"), "email": "cli@example.com"}
    done = run_cli(keyed.env, "publish", "user_registered", "--json", json.dumps(by_cli))
    assert done.returncode == 0, done.stderr
    # and the Python helper publishes with a ring whose first key is the new one
    by_helper = {"event_id": ids("helper"), "user_id": ids("user"), "email": "h@example.com"}
    publish_helper(upstream, "user_registered", by_helper, q, keys=KeyRing.parse(KEYS))
    # Then both run
    rows = wait_for(by_cli["event_id"], by_helper["event_id"])
    assert {r["status"] for r in rows.values()} == {"succeeded"}, rows
    # When `payworker publish` runs without keys
    refused_before = len(refusal_lines(keyed))
    unsigned = {"event_id": ids("nokeys"), "user_id": ids("user"), "email": "n@example.com"}
    env = {k: v for k, v in keyed.env.items() if k != "PAYWORKER_MESSAGE_KEYS"}
    done = run_cli(env, "publish", "user_registered", "--json", json.dumps(unsigned))
    assert done.returncode == 0, done.stderr
    # Then the keyed worker refuses what it published
    wait_until(lambda: len(refusal_lines(keyed)) > refused_before, 30,
               lambda: f"no refusal:\n{keyed.log()[-3000:]}")
    assert "reason=unsigned" in refusal_lines(keyed)[-1]
    assert event_rows(engine, [unsigned["event_id"]]) == {}


def test_a_worker_without_keys_warns_at_start_up_that_messages_are_not_authenticated(
    worker, keyed,
):
    warning = "MESSAGES ARE NOT AUTHENTICATED: PAYWORKER_MESSAGE_KEYS is unset"
    assert re.search(rf"warning.*{re.escape(warning)}", worker.log(), re.I), worker.log()[-3000:]
    assert warning not in keyed.log()
    assert "messages are authenticated" in keyed.log() and "signing key k-new" in keyed.log()
    assert KEYS.split(",")[0].split(":")[1] not in keyed.log()  # never the secret
