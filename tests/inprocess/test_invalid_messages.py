"""What the ledger keeps of a message refused at the edge (db.claims.record_invalid, as
tasks/base.py's rejection calls it): refused free text replaced, an oversized message
summarised, the error bounded, and a payload hash that hides nothing the row does not
show. Real Postgres, no worker."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, text

from core.errors import MAX_ERROR_TEXT, IdempotencyConflict, InvalidMessage
from db import claims
from tasks.messages import check_size, parse_message

PAN = "4242424242424242"


def _record(
    engine: Engine,
    message_type: str,
    kwargs: dict[str, Any],
    check: Callable[[], Any] | None = None,
) -> bool:
    """Validate as the task does and record the rejection as tasks/base.py does."""
    with pytest.raises(InvalidMessage) as info:
        (check or (lambda: parse_message(message_type, kwargs)))()
    error = info.value
    with engine.begin() as conn:
        return claims.record_invalid(
            conn,
            message_type,
            kwargs["event_id"],
            kwargs.get("user_id"),
            kwargs,
            error.message,
            queue="payments_inprocess",
            stored=error.stored_payload,
        )


def _row(engine: Engine, event_id: str) -> tuple[dict[str, Any], str]:
    with engine.connect() as conn:
        row = (
            conn.execute(text("SELECT * FROM payment_events WHERE event_id = :e"), {"e": event_id})
            .mappings()
            .one()
        )
        whole = conn.execute(
            text("SELECT t::text FROM payment_events t WHERE event_id = :e"), {"e": event_id}
        ).scalar()
    return dict(row), str(whole)


def test_refused_free_text_is_replaced_in_the_stored_payload(
    ids: Callable[[str], str], engine: Engine
) -> None:
    # Given a charge with a card number in its description
    kwargs = {
        "event_id": ids("charge"),
        "user_id": ids("user"),
        "amount": 100,
        "currency": "usd",
        "description": f"card {PAN} exp 12/30",
    }
    # When it is refused and recorded
    assert _record(engine, "charge_requested", kwargs)
    # Then the row keeps the message with the field replaced, and nowhere the number
    row, whole = _row(engine, kwargs["event_id"])
    assert (row["status"], row["error_code"]) == ("failed", "invalid_message")
    assert row["payload"]["description"] == "[refused: card number]"
    assert row["payload"]["amount"] == 100
    assert PAN not in whole
    # ... and its hash is not one of the raw message, which could be searched for the number
    raw = json.dumps(
        {"type": "charge_requested", "raw": kwargs},
        sort_keys=True,
        default=repr,
        separators=(",", ":"),
    )
    assert row["payload_hash"] != hashlib.sha256(raw.encode()).hexdigest()


def test_the_same_refused_message_again_is_a_duplicate_and_another_one_a_conflict(
    ids: Callable[[str], str], engine: Engine
) -> None:
    kwargs = {
        "event_id": ids("charge"),
        "user_id": ids("user"),
        "amount": 100,
        "currency": "usd",
        "description": PAN,
    }
    assert _record(engine, "charge_requested", kwargs)
    # When the same message comes again  /  Then it is a duplicate
    assert not _record(engine, "charge_requested", kwargs)
    # When another message comes under the same event_id  /  Then it is a conflict
    with pytest.raises(IdempotencyConflict):
        _record(engine, "charge_requested", {**kwargs, "amount": 200})


def test_an_oversized_message_is_stored_as_a_summary(
    ids: Callable[[str], str], engine: Engine
) -> None:
    kwargs = {
        "event_id": ids("big"),
        "user_id": ids("user"),
        "amount": 100,
        "currency": "usd",
        "description": "garbage " * 20_000,
    }
    assert _record(engine, "charge_requested", kwargs, lambda: check_size(kwargs, 65536))
    row, whole = _row(engine, kwargs["event_id"])
    assert "over the limit of 65536 bytes" in row["error_message"]
    assert "garbage" not in whole
    assert set(row["payload"]) == {"refused"}


def test_the_error_of_2000_unknown_kwargs_is_stored_bounded(
    ids: Callable[[str], str], engine: Engine
) -> None:
    kwargs: dict[str, Any] = {
        "event_id": ids("kw"),
        "user_id": ids("user"),
        "amount": 100,
        "currency": "usd",
    }
    kwargs.update({f"unknown_{i}_" + "é" * 100: i for i in range(2000)})
    assert _record(engine, "charge_requested", kwargs)
    row, _ = _row(engine, kwargs["event_id"])
    assert len(row["error_message"].encode()) <= MAX_ERROR_TEXT
    assert len(json.dumps(row["payload"])) < 64 * 1024
