"""Property: arbitrary keyword arguments thrown at every payment task never crash the worker,
always end in a recorded, final outcome (or a logged rejection when no event_id can be read),
and never reach Stripe.

Hypothesis generates the messages; they are published to a dedicated worker in one batch and
the properties are checked on the whole batch afterwards (a real worker per example would be
far too slow to shrink)."""

from __future__ import annotations

import math
import time
import uuid
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

TASKS = (
    "user_registered",
    "card_token_received",
    "default_card_changed",
    "card_removed",
    "charge_requested",
)
CONTRACT_KEYS = (
    "event_id", "user_id", "email", "name", "metadata", "token", "make_default", "card_id",
    "amount", "currency", "description",
)
# Codes a batch of garbage may legitimately end with. No message can succeed: `@` is never
# generated, so no user_registered is valid and no customer (hence no card) ever exists.
EXPECTED_CODES = {
    "invalid_message", "customer_not_found", "card_not_found", "amount_too_small",
    "amount_too_large", "unsupported_currency",
}
REJECTED = "rejected message without a readable event_id"
# A valid message for an unknown user waits this long for its customer, then fails.
WINDOW_SECONDS = 1
MARKER = f"hyp{uuid.uuid4().hex[:10]}"
ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

# ---- strategies ------------------------------------------------------------------------

garbage_text = st.text(alphabet=st.characters(exclude_characters="@"), max_size=40)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | garbage_text,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(garbage_text, children, max_size=4),
    max_leaves=12,
)
suffix = st.text(alphabet=ALNUM, max_size=10)
plausible = st.one_of(
    suffix.map(lambda s: f"tok_{MARKER}{s}"),
    suffix.map(lambda s: f"card_{MARKER}{s}"),
    st.integers(min_value=-100, max_value=10**9),
    st.sampled_from(["usd", "EUR", "jpy", "bhd", "isk", "xyz", "XTS", "US", ""]),
    st.text(alphabet=ALNUM, min_size=1, max_size=12),
    st.dictionaries(st.text(alphabet=ALNUM, max_size=8), st.text(alphabet=ALNUM, max_size=8),
                    max_size=3),
)
kwargs_strategy = st.dictionaries(
    st.sampled_from(CONTRACT_KEYS) | garbage_text, json_values | plausible, max_size=8
)
# How the event_id is formed: readable (mostly) or one of the unreadable shapes.
event_id_shapes = st.sampled_from(
    ["readable"] * 5 + ["readable+garbage", "missing", "int", "empty", "too long", "json"]
)
positional = st.one_of(st.none(), st.none(), st.none(), st.lists(json_values, min_size=1,
                                                                   max_size=2))


def _is_readable(value: Any) -> bool:
    """An event_id a refusal can be recorded under: a printable string of 1-200 characters.
    One with a control or invisible character (NUL, ESC, a bidi override) counts as
    unreadable (logged, no row)."""
    return isinstance(value, str) and 0 < len(value) <= 200 and value.isprintable()


class Batch:
    """The messages of one property run, and what each must lead to."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any], Any]] = []
        self.counter = 0

    def event_id(self, shape: str, garbage: Any) -> Any:
        self.counter += 1
        base = f"{MARKER}-{self.counter}"
        return {
            "readable": base,
            "readable+garbage": (base + "-" + str(garbage))[:200],
            "missing": None,
            "int": self.counter,
            "empty": "",
            "too long": base + "x" * 200,
            "json": garbage,
        }[shape]

    @property
    def readable_ids(self) -> set[str]:
        return {kw["event_id"] for _, kw, _ in self.sent if _is_readable(kw.get("event_id"))}

    @property
    def unreadable_count(self) -> int:
        return sum(1 for _, kw, _ in self.sent if not _is_readable(kw.get("event_id")))


def _rows(engine: Any) -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        found = conn.execute(
            text(
                "SELECT event_id, type, status, error_code, attempts, last_error,"
                " payload::text AS payload_text, result::text AS result_text"
                " FROM payment_events WHERE event_id LIKE :prefix"
            ),
            {"prefix": f"{MARKER}%"},
        ).mappings()
        return {row["event_id"]: dict(row) for row in found}


def _describe(batch: Batch, event_ids: set[str], limit: int = 12) -> str:
    lines = [
        f"  {name}: args={args!r} kwargs={kw!r}"[:300]
        for name, kw, args in batch.sent
        if _is_readable(kw.get("event_id")) and kw["event_id"] in event_ids
    ]
    more = [f"  … and {len(lines) - limit} more"] if len(lines) > limit else []
    return "\n".join(lines[:limit] + more)


def test_arbitrary_kwargs_never_crash_the_worker_nor_reach_stripe(
    start_worker, upstream, engine, stripe_fake
):
    # Given a dedicated worker whose out-of-order messages wait only briefly
    worker = start_worker(PAYWORKER_PREREQUISITE_WAIT_SECONDS=str(WINDOW_SECONDS))
    batch = Batch()

    # When hypothesis throws arbitrary kwargs (and sometimes positional args) at every task
    @settings(
        max_examples=12,  # x 5 tasks = 60 messages
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(kwargs=kwargs_strategy, shape=event_id_shapes, args=positional,
           garbage=json_values)
    # JSON as Python writes it allows NaN; Postgres' jsonb does not.
    @example(kwargs={"user_id": "u", "amount": math.nan, "currency": "usd"},
             shape="readable", args=None, garbage=None)
    # A NUL character is a valid str and valid JSON; Postgres' text and jsonb refuse it.
    @example(kwargs={"user_id": "u", "email": "x", "name": "a\x00b", "card_id": "c\x00"},
             shape="readable", args=None, garbage=None)
    def publish_everywhere(kwargs: dict[str, Any], shape: str, args: Any, garbage: Any) -> None:
        for name in TASKS:
            body = dict(kwargs)
            body.pop("event_id", None)
            event_id = batch.event_id(shape, garbage)
            if shape != "missing":
                body["event_id"] = event_id
            upstream.send_task(f"payments.{name}", args=args, kwargs=body, queue=worker.queue)
            batch.sent.append((name, body, args))

    publish_everywhere()
    expected = batch.readable_ids
    assert {name for name, _, _ in batch.sent} == set(TASKS)
    assert expected and batch.unreadable_count  # the batch exercises both paths

    # ... and the worker has drained the batch
    deadline = time.monotonic() + 25
    rows: dict[str, dict[str, Any]] = {}
    rejected = 0
    while time.monotonic() < deadline:
        rows = _rows(engine)
        rejected = worker.log().count(REJECTED)
        final = {e for e, r in rows.items() if r["status"] in ("succeeded", "failed", "dead")}
        if final >= expected and rejected >= batch.unreadable_count:
            break
        time.sleep(0.2)

    # Then every message with a readable event_id has exactly one final, failed row ...
    missing = expected - set(rows)
    assert not missing, f"no ledger row for:\n{_describe(batch, missing)}"
    assert set(rows) == expected, f"rows for unreadable ids: {set(rows) - expected}"
    unfinished = {e for e, r in rows.items() if r["status"] not in ("failed", "dead", "succeeded")}
    assert not unfinished, (
        "not final:\n" + _describe(batch, unfinished)
        + "\nlast errors: " + repr({e: rows[e]["last_error"] for e in unfinished})
    )
    wrong = {e: (r["status"], r["error_code"]) for e, r in rows.items()
             if r["status"] != "failed" or r["error_code"] not in EXPECTED_CODES}
    assert not wrong, f"unexpected outcomes {wrong}:\n{_describe(batch, set(wrong))}"
    # ... every other message was logged as rejected ...
    assert rejected == batch.unreadable_count, (rejected, batch.unreadable_count)
    # ... no full card token was stored ...
    leaked = {e for e, r in rows.items()
              if f"tok_{MARKER}" in (r["payload_text"] or "") + (r["result_text"] or "")}
    assert not leaked, leaked
    # ... nothing reached Stripe: no write keyed by these events, no path naming their ids
    touched = [
        r for r in stripe_fake.requests()
        if MARKER in (r["idempotency_key"] or "") or MARKER in r["path"]
    ]
    assert touched == []
    # ... and the worker is alive and still processes a valid message
    assert worker.alive()
    fresh, user = f"{MARKER}-fresh", f"user-{MARKER}"
    upstream.send_task("payments.user_registered", queue=worker.queue,
                       kwargs={"event_id": fresh, "user_id": user, "email": "ok@example.com"})
    deadline = time.monotonic() + 20
    row: dict[str, Any] = {}
    while time.monotonic() < deadline and row.get("status") != "succeeded":
        row = _rows(engine).get(fresh, {})
        time.sleep(0.1)
    assert row.get("status") == "succeeded", row
