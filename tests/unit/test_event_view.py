"""`payworker events show` prints a ledger row: an action_required event's client secret
(kept in its result for the app) is masked there. Pure: no services."""

from __future__ import annotations

from dataclasses import fields
from datetime import UTC, datetime
from typing import Any

from db.queries import EventRecord
from worker.views import SEALED_MARKER, event_json

SECRET = "pi_3AbCdEf123_secret_ZyXwVu987"


def _record(**values: Any) -> EventRecord:
    moment = datetime(2026, 11, 27, tzinfo=UTC)
    defaults: dict[str, Any] = {}
    for column in fields(EventRecord):
        defaults[column.name] = moment if column.type in ("datetime", "datetime | None") else None
    defaults.update(
        event_id="evt-1", type="charge_requested", user_id="u-1", payload={}, payload_hash="h",
        status="action_required", attempts=1, recovery_point="intent_watching", progress={},
        transient_failures=0, generation=0, redrives=0,
    )  # fmt: skip
    defaults.update(values)
    return EventRecord(**defaults)


def test_the_client_secret_of_a_waiting_event_is_masked_in_its_shown_result() -> None:
    # Given an event waiting for its customer, its result holding the client secret
    record = _record(
        result={"payment_intent_id": "pi_3AbCdEf123", "client_secret": SECRET}, sealed="x"
    )

    # When the operator's view of it is built
    shown = event_json(record)

    # Then the PaymentIntent id is there, the secret part of the client secret is not
    assert shown["result"]["payment_intent_id"] == "pi_3AbCdEf123"
    assert shown["result"]["client_secret"] == "pi_3AbCdEf123_secret_…"
    assert "ZyXwVu987" not in repr(shown)
    assert shown["sealed_token"] == SEALED_MARKER
