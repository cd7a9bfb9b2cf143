"""Every error code of the contract, end to end: a real worker, real Postgres, real Redis
and real HTTP to the Stripe fake. A validation failure must be recorded against its event
and must never reach Stripe; a message without a readable event_id is logged and dropped;
the worker survives all of it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text

TERMINAL = ("succeeded", "failed", "dead")
# The prerequisite window of the short-window worker (seconds).
SHORT_WINDOW = 3


# ---- helpers ---------------------------------------------------------------------------


def _rows(engine: Any, event_ids: list[str]) -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        found = conn.execute(
            text("SELECT * FROM payment_events WHERE event_id = ANY(:ids)"), {"ids": event_ids}
        ).mappings()
        return {row["event_id"]: dict(row) for row in found}


def _wait_final(engine: Any, *event_ids: str, timeout: float = 30) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    rows: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        rows = _rows(engine, list(event_ids))
        if len(rows) == len(event_ids) and all(r["status"] in TERMINAL for r in rows.values()):
            return rows
        time.sleep(0.1)
    states = {e: (rows.get(e, {}).get("status"), rows.get(e, {}).get("last_error"))
              for e in event_ids}
    raise AssertionError(f"events not final within {timeout}s: {states}")


def _send(upstream: Any, queue: str, message_type: str, *, args: Any = None,
          **kwargs: Any) -> str:
    result = upstream.send_task(
        f"payments.{message_type}", args=args, kwargs=kwargs, queue=queue
    )
    return str(result.id)


def _stripe_posts(stripe_fake: Any, event_id: str) -> list[dict[str, Any]]:
    """Stripe writes made for this event (every POST carries `pw:{event_id}:…`)."""
    return [
        r for r in stripe_fake.requests(method="POST")
        if (r["idempotency_key"] or "").startswith(f"pw:{event_id}:")
    ]


def _uid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:10]}"


def _log_lines(worker: Any, needle: str) -> list[str]:
    return [line for line in worker.log().splitlines() if needle in line]


def _wait_log(worker: Any, needle: str, timeout: float = 15) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = _log_lines(worker, needle)
        if lines:
            return lines
        time.sleep(0.1)
    raise AssertionError(f"no log line containing {needle!r} within {timeout}s")


def _charge_row(engine: Any, event_id: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT * FROM charges WHERE event_id = :e"), {"e": event_id}
        ).mappings().one_or_none()
    return dict(row) if row is not None else None


# ---- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def account(upstream, worker, engine, stripe_fake) -> dict[str, str]:
    """A registered user with one (default) card, set up once for this module."""
    user, reg, tok = _uid("err-user"), _uid("err-reg"), _uid("err-tok")
    _send(upstream, worker.queue, "user_registered", event_id=reg, user_id=user,
          email="errors@example.com")
    token = stripe_fake.create_card_token("4242424242424242")
    _send(upstream, worker.queue, "card_token_received", event_id=tok, user_id=user,
          token=token)
    rows = _wait_final(engine, reg, tok)
    assert rows[reg]["status"] == "succeeded", rows[reg]
    assert rows[tok]["status"] == "succeeded", rows[tok]
    return {"user_id": user, "card_id": rows[tok]["result"]["card_id"]}


@pytest.fixture(scope="module")
def short_worker(start_worker):
    """A worker whose out-of-order messages wait only SHORT_WINDOW seconds."""
    return start_worker(concurrency=2, PAYWORKER_PREREQUISITE_WAIT_SECONDS=str(SHORT_WINDOW))


@pytest.fixture
def charge(upstream, worker, engine, stripe_fake, account) -> Callable[..., dict[str, Any]]:
    """Publish one charge_requested for the module's user and return its final row."""

    def run(**fields: Any) -> dict[str, Any]:
        event_id = _uid("err-chg")
        body = {"event_id": event_id, "user_id": account["user_id"], **fields}
        _send(upstream, worker.queue, "charge_requested", **body)
        return _wait_final(engine, event_id)[event_id]

    return run


def _assert_rejected_before_stripe(row: dict[str, Any], code: str, stripe_fake: Any) -> None:
    assert row["status"] == "failed", row
    assert row["error_code"] == code, row
    assert row["error_message"], row
    assert row["completed_at"] is not None
    assert _stripe_posts(stripe_fake, row["event_id"]) == []


# ---- invalid_message -------------------------------------------------------------------

INVALID_CHARGES = {
    "float amount": {"amount": 12.5, "currency": "usd"},
    "string amount": {"amount": "100", "currency": "usd"},
    "bool amount": {"amount": True, "currency": "usd"},
    "zero amount": {"amount": 0, "currency": "usd"},
    "negative amount": {"amount": -5, "currency": "usd"},
    "missing amount": {"currency": "usd"},
    "misspelt amount_cents": {"amount_cents": 1000, "currency": "usd"},
    "two-letter currency": {"amount": 1000, "currency": "US"},
    "metadata not a dict": {"amount": 1000, "currency": "usd", "metadata": ["a", "b"]},
    "metadata with a non-str value": {"amount": 1000, "currency": "usd", "metadata": {"n": 1}},
    "10,000-char garbage description": {
        "amount": 1000, "currency": "usd", "description": "\u2603garbage" * 1250,
    },
    "BHD not a multiple of 10": {"amount": 1005, "currency": "bhd"},
    "ISK not a multiple of 100": {"amount": 150, "currency": "isk"},
}


@pytest.mark.parametrize("fields", INVALID_CHARGES.values(), ids=INVALID_CHARGES.keys())
def test_invalid_charge_is_recorded_and_never_reaches_stripe(fields, charge, stripe_fake):
    # Given a registered user with a card, and a charge message breaking one rule
    # When it is published
    row = charge(**fields)
    # Then the event failed as invalid_message and no Stripe write was made for it
    _assert_rejected_before_stripe(row, "invalid_message", stripe_fake)


def test_garbage_string_is_stored_bounded(charge, stripe_fake):
    # Given a charge whose description is 10,000 characters of garbage
    garbage = "x" * 10_000
    # When it is processed
    row = charge(amount=1000, currency="usd", description=garbage)
    # Then it is rejected, and the ledger keeps a bounded payload, not the whole string
    _assert_rejected_before_stripe(row, "invalid_message", stripe_fake)
    assert "description" in row["error_message"]
    assert len(str(row["payload"])) < 2_000


@pytest.mark.parametrize(
    ("message_type", "fields"),
    [
        ("user_registered", {"email": "a@example.com", "phone": "555-0100"}),
        ("user_registered", {"email": "not-an-email"}),
        ("user_registered", {"email": "a@example.com", "metadata": "plain string"}),
        ("card_token_received", {"token": "tok_abcdefgh1234", "make_default": "yes"}),
        ("card_token_received", {"token": "not a token"}),
        ("default_card_changed", {"card_id": 42}),
        ("card_removed", {}),
    ],
    ids=["unknown kwarg", "bad email", "metadata not a dict", "make_default not a bool",
         "malformed token", "int card_id", "missing card_id"],
)
def test_invalid_message_of_each_type_is_recorded(
    message_type, fields, upstream, worker, engine, stripe_fake
):
    # Given a malformed message of some type, with a readable event_id
    event_id = _uid("err-bad")
    # When it is published
    _send(upstream, worker.queue, message_type, event_id=event_id, user_id=_uid("u"), **fields)
    row = _wait_final(engine, event_id)[event_id]
    # Then it is recorded as failed invalid_message of that type, and Stripe never hears of it
    assert row["type"] == message_type
    _assert_rejected_before_stripe(row, "invalid_message", stripe_fake)


def test_positional_arguments_are_invalid(upstream, worker, engine, stripe_fake, account):
    # Given a charge that also carries a positional argument
    event_id = _uid("err-pos")
    # When it is published with args=[1]
    _send(upstream, worker.queue, "charge_requested", args=[1], event_id=event_id,
          user_id=account["user_id"], amount=1000, currency="usd")
    row = _wait_final(engine, event_id)[event_id]
    # Then it is rejected: messages take keyword arguments only
    _assert_rejected_before_stripe(row, "invalid_message", stripe_fake)
    assert "positional" in row["error_message"]


def test_kwarg_named_self_is_invalid_not_a_crash(upstream, worker, engine, stripe_fake):
    # Given a message with an unknown kwarg that happens to be called `self`
    event_id = _uid("err-self")
    # When it is published
    _send(upstream, worker.queue, "user_registered", event_id=event_id, user_id=_uid("u"),
          email="self@example.com", self="x")
    # Then it is recorded as invalid_message like any other unknown kwarg
    row = _wait_final(engine, event_id, timeout=10)[event_id]
    _assert_rejected_before_stripe(row, "invalid_message", stripe_fake)


@pytest.mark.parametrize(
    "event_id",
    [None, 12345, "", "e" * 201, "evt-\x00-nul"],
    ids=["missing", "int", "empty", "too long", "NUL character"],
)
def test_unreadable_event_id_is_logged_without_a_row(
    event_id, upstream, worker, engine, stripe_fake
):
    # Given a message whose event_id cannot be read
    fields: dict[str, Any] = {"user_id": _uid("u"), "email": "x@example.com"}
    if event_id is not None:
        fields["event_id"] = event_id
    # When it is published
    task_id = _send(upstream, worker.queue, "user_registered", **fields)
    # Then the worker logs the rejection against the task id ...
    lines = _wait_log(worker, f"task_id={task_id}")
    assert any("rejected message without a readable event_id" in line for line in lines), lines
    # ... and writes no ledger row and no customer
    if event_id is not None:
        assert _rows(engine, [str(event_id).replace("\x00", "")]) == {}
    with engine.connect() as conn:
        customers = conn.execute(
            text("SELECT count(*) FROM customers WHERE user_id = :u"), {"u": fields["user_id"]}
        ).scalar()
    assert customers == 0


def test_positional_only_message_is_logged_without_a_row(upstream, worker):
    # Given a message with only positional arguments (no event_id at all)
    # When it is published
    task_id = _send(upstream, worker.queue, "charge_requested", args=[1])
    # Then the rejection is logged
    lines = _wait_log(worker, f"task_id={task_id}")
    assert any("rejected message without a readable event_id" in line for line in lines), lines


# ---- amount and currency rules ---------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "currency"),
    [(49, "usd"), (49, "jpy"), (29, "gbp")],
    ids=["USD 49", "JPY 49", "GBP 29"],
)
def test_amount_too_small(amount, currency, charge, stripe_fake):
    # Given a positive amount under the currency's minimum
    # When it is charged
    row = charge(amount=amount, currency=currency)
    # Then the event fails amount_too_small before any Stripe call
    _assert_rejected_before_stripe(row, "amount_too_small", stripe_fake)


@pytest.mark.parametrize("amount", [100_000_000, 10**30], ids=["1e8", "1e30"])
def test_amount_too_large(amount, charge, stripe_fake):
    # Given an amount above Stripe's eight-digit ceiling
    # When it is charged
    row = charge(amount=amount, currency="usd")
    # Then the event fails amount_too_large before any Stripe call
    _assert_rejected_before_stripe(row, "amount_too_large", stripe_fake)


@pytest.mark.parametrize("currency", ["xyz", "XTS"])
def test_unsupported_currency(currency, charge, stripe_fake):
    # Given a well-formed currency code Stripe does not charge in
    # When it is charged
    row = charge(amount=1000, currency=currency)
    # Then the event fails unsupported_currency before any Stripe call
    _assert_rejected_before_stripe(row, "unsupported_currency", stripe_fake)


def test_upper_case_currency_is_accepted_and_stored_lower_case(
    charge, engine, stripe_fake, account
):
    # Given a charge in "EUR"
    # When it is processed
    row = charge(amount=1000, currency="EUR")
    # Then it succeeds, and Postgres and Stripe both hold "eur"
    assert row["status"] == "succeeded", row
    assert row["result"]["currency"] == "eur"
    stored = _charge_row(engine, row["event_id"])
    assert stored is not None and stored["currency"] == "eur"
    posts = _stripe_posts(stripe_fake, row["event_id"])
    assert [p["path"] for p in posts] == ["/v1/payment_intents"]


# ---- prerequisites ---------------------------------------------------------------------


def test_customer_not_found_after_the_wait_window(upstream, short_worker, engine, stripe_fake):
    # Given a worker that waits SHORT_WINDOW seconds for prerequisites
    event_id = _uid("err-nocust")
    # When a charge arrives for a user that is never registered
    _send(upstream, short_worker.queue, "charge_requested", event_id=event_id,
          user_id=_uid("ghost"), amount=1000, currency="usd")
    row = _wait_final(engine, event_id, timeout=SHORT_WINDOW + 8)[event_id]
    # Then it waited (several attempts, at least the window) and failed customer_not_found
    assert row["status"] == "failed" and row["error_code"] == "customer_not_found", row
    assert row["attempts"] > 1, row
    waited = (row["completed_at"] - row["created_at"]).total_seconds()
    assert waited >= SHORT_WINDOW - 0.2, waited
    assert _stripe_posts(stripe_fake, event_id) == []


def test_card_of_another_user_fails_at_once(upstream, worker, engine, stripe_fake, account):
    # Given a second registered user, and the card of the module's user
    other, reg = _uid("err-other"), _uid("err-reg2")
    _send(upstream, worker.queue, "user_registered", event_id=reg, user_id=other,
          email="other@example.com")
    _wait_final(engine, reg)
    # When the second user is charged on the first user's card
    event_id = _uid("err-steal")
    _send(upstream, worker.queue, "charge_requested", event_id=event_id, user_id=other,
          amount=1000, currency="usd", card_id=account["card_id"])
    row = _wait_final(engine, event_id)[event_id]
    # Then it fails card_not_found on the first attempt, without waiting and without Stripe
    _assert_rejected_before_stripe(row, "card_not_found", stripe_fake)
    assert row["attempts"] == 1, row


def test_unknown_card_fails_after_the_wait_window(
    upstream, short_worker, engine, stripe_fake, account
):
    # Given a registered user and a card id nobody has seen
    event_id = _uid("err-nocard")
    # When the user is charged on that card through the short-window worker
    _send(upstream, short_worker.queue, "charge_requested", event_id=event_id,
          user_id=account["user_id"], amount=1000, currency="usd",
          card_id=f"card_unknown{uuid.uuid4().hex[:12]}")
    row = _wait_final(engine, event_id, timeout=SHORT_WINDOW + 8)[event_id]
    # Then it waits for the card, then fails card_not_found
    _assert_rejected_before_stripe(row, "card_not_found", stripe_fake)
    assert row["attempts"] > 1, row
    assert (row["completed_at"] - row["created_at"]).total_seconds() >= SHORT_WINDOW - 0.2


def test_removed_card_is_not_found(upstream, worker, engine, stripe_fake):
    # Given a user whose only card was removed
    user, reg, tok, rem = _uid("err-rm"), _uid("err-rmreg"), _uid("err-rmtok"), _uid("err-rm")
    _send(upstream, worker.queue, "user_registered", event_id=reg, user_id=user,
          email="rm@example.com")
    token = stripe_fake.create_card_token("5555555555554444")
    _send(upstream, worker.queue, "card_token_received", event_id=tok, user_id=user,
          token=token)
    card_id = _wait_final(engine, reg, tok)[tok]["result"]["card_id"]
    _send(upstream, worker.queue, "card_removed", event_id=rem, user_id=user, card_id=card_id)
    assert _wait_final(engine, rem)[rem]["status"] == "succeeded"
    # When that card is charged
    event_id = _uid("err-rmchg")
    _send(upstream, worker.queue, "charge_requested", event_id=event_id, user_id=user,
          amount=1000, currency="usd", card_id=card_id)
    row = _wait_final(engine, event_id)[event_id]
    # Then the charge fails card_not_found at once, without a Stripe call
    _assert_rejected_before_stripe(row, "card_not_found", stripe_fake)
    assert row["attempts"] == 1, row


# ---- Stripe's own refusals -------------------------------------------------------------


def test_card_declined_records_decline_code_and_is_not_retried(
    upstream, worker, engine, stripe_fake
):
    # Given a user whose card attaches but declines charges (4000000000000341)
    user, reg, tok = _uid("err-dec"), _uid("err-decreg"), _uid("err-dectok")
    _send(upstream, worker.queue, "user_registered", event_id=reg, user_id=user,
          email="dec@example.com")
    token = stripe_fake.create_card_token("4000000000000341")
    _send(upstream, worker.queue, "card_token_received", event_id=tok, user_id=user,
          token=token)
    rows = _wait_final(engine, reg, tok)
    assert rows[tok]["status"] == "succeeded", rows[tok]
    # When the user is charged
    event_id = _uid("err-decchg")
    _send(upstream, worker.queue, "charge_requested", event_id=event_id, user_id=user,
          amount=2000, currency="usd")
    row = _wait_final(engine, event_id)[event_id]
    # Then the event failed card_declined after exactly one Stripe call ...
    assert row["status"] == "failed" and row["error_code"] == "card_declined", row
    assert row["attempts"] == 1, row
    posts = _stripe_posts(stripe_fake, event_id)
    assert [p["path"] for p in posts] == ["/v1/payment_intents"], posts
    assert posts[0]["status"] == 402
    # ... and the result and the charges row agree on the decline
    assert "decline_code" in row["result"], row["result"]
    stored = _charge_row(engine, event_id)
    assert stored is not None
    assert stored["status"] == "failed" and stored["failure_code"] == "card_declined"
    assert stored["decline_code"] == row["result"]["decline_code"]
    assert stored["stripe_charge_id"] == row["result"]["charge_id"]


def test_token_unknown_to_stripe_is_stripe_invalid_request(
    upstream, worker, engine, stripe_fake, account
):
    # Given a token that does not exist on Stripe
    token = "tok_doesnotexist123"
    event_id = _uid("err-tok404")
    # When it is received for a registered user
    _send(upstream, worker.queue, "card_token_received", event_id=event_id,
          user_id=account["user_id"], token=token)
    row = _wait_final(engine, event_id)[event_id]
    # Then the event fails stripe_invalid_request, once, and the message masks the token
    assert row["status"] == "failed" and row["error_code"] == "stripe_invalid_request", row
    assert row["attempts"] == 1, row
    assert token not in (row["error_message"] or "")
    assert token not in str(row["payload"]) and token not in str(row["result"])
    assert _stripe_posts(stripe_fake, event_id) == []  # the token lookup is a GET


# ---- shapes the JSON allows but Postgres does not ---------------------------------------


def test_nan_in_a_message_is_recorded_invalid(upstream, worker, engine, stripe_fake, account):
    # Given a charge whose amount is NaN (JSON as Python writes it: a bare NaN token)
    event_id = _uid("err-nan")
    # When it is published
    _send(upstream, worker.queue, "charge_requested", event_id=event_id,
          user_id=account["user_id"], amount=float("nan"), currency="usd")
    # Then it is recorded as invalid_message like any other non-integer amount
    row = _wait_final(engine, event_id, timeout=10)[event_id]
    _assert_rejected_before_stripe(row, "invalid_message", stripe_fake)


def test_nul_character_in_a_field_is_recorded_invalid(upstream, worker, engine, stripe_fake):
    # Given a registration whose name contains a NUL character (valid JSON, valid str)
    event_id = _uid("err-nul")
    # When it is published
    _send(upstream, worker.queue, "user_registered", event_id=event_id, user_id=_uid("u"),
          email="nul@example.com", name="Ada\x00Lovelace")
    # Then the event reaches a final, readable outcome instead of looping on a DB error
    row = _wait_final(engine, event_id, timeout=10)[event_id]
    _assert_rejected_before_stripe(row, "invalid_message", stripe_fake)


# ---- the worker survives ---------------------------------------------------------------


def test_worker_survives_and_processes_a_normal_message(upstream, worker, engine):
    # Given the shared worker after every bad message above (and one more now)
    _send(upstream, worker.queue, "charge_requested", event_id=_uid("err-last"),
          amount="garbage", user_id=[1, 2])
    # When a normal registration follows
    event_id, user = _uid("err-ok"), _uid("err-okuser")
    _send(upstream, worker.queue, "user_registered", event_id=event_id, user_id=user,
          email="ok@example.com")
    row = _wait_final(engine, event_id)[event_id]
    # Then the worker process is alive and the message succeeded
    assert worker.alive()
    assert row["status"] == "succeeded" and row["result"]["existing"] is False, row
