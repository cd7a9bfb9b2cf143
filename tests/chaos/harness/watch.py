"""Waiting for and reading what a scenario did: polls, the ledger's rows and counts, the
workers' logs, and one printed line of figures per scenario."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import Engine

from tests.conftest import TERMINAL, event_rows


def poll(condition: Callable[[], Any], timeout: float, what: str, step: float = 0.02) -> Any:
    """The first truthy value of `condition()`; fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def figures(scenario: str, **values: Any) -> str:
    """One greppable line of figures per test, printed with -s."""
    line = f"[chaos] {scenario}: " + " ".join(f"{k}={v}" for k, v in values.items())
    print(line, flush=True)
    return line


def event_row(engine: Engine, event_id: str) -> dict[str, Any] | None:
    return event_rows(engine, [event_id]).get(event_id)


def status_counts(engine: Engine, event_ids: Iterable[str]) -> Counter[str]:
    """Events by ledger status; those without a row count as "missing"."""
    ids = list(event_ids)
    rows = event_rows(engine, ids)
    counts: Counter[str] = Counter(r["status"] for r in rows.values())
    counts["missing"] = len(ids) - len(rows)
    return +counts


def wait_final(
    engine: Engine, event_ids: Iterable[str], timeout: float
) -> dict[str, dict[str, Any]]:
    """Rows of the events once all are final. On timeout, returns what there is: the caller
    counts the unfinished ones as lost and fails with the figures printed."""
    ids = list(event_ids)
    deadline = time.monotonic() + timeout
    rows: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        rows = event_rows(engine, ids)
        if len(rows) == len(ids) and all(r["status"] in TERMINAL for r in rows.values()):
            break
        time.sleep(0.25)
    return rows


# Where a batch settles: final, or waiting for a customer's authentication (action_required
# is not final, the sweeper watches the PaymentIntent, but nothing moves it before the
# customer does).
SETTLED = (*TERMINAL, "action_required")


def wait_settled(
    engine: Engine, event_ids: Iterable[str], timeout: float
) -> dict[str, dict[str, Any]]:
    """Rows of the events once each is final or action_required (else what there is)."""
    ids = list(event_ids)
    deadline = time.monotonic() + timeout
    rows: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        rows = event_rows(engine, ids)
        if len(rows) == len(ids) and all(r["status"] in SETTLED for r in rows.values()):
            break
        time.sleep(0.25)
    return rows


def unsettled(rows: dict[str, dict[str, Any]], event_ids: Iterable[str]) -> list[str]:
    return [e for e in event_ids if rows.get(e, {}).get("status") not in SETTLED]


def unfinished(rows: dict[str, dict[str, Any]], event_ids: Iterable[str]) -> list[str]:
    return [e for e in event_ids if rows.get(e, {}).get("status") not in TERMINAL]


def duplicate_deliveries(worker_logs: str) -> int:
    """Deliveries of a message whose event was already final or leased (the ledger's log)."""
    return worker_logs.count("duplicate delivery ignored")


def explain(engine: Engine, event_ids: Iterable[str], logs: str, limit: int = 5) -> str:
    """The ledger row and the worker log lines of some events, for a failure message."""
    ids = list(event_ids)[:limit]
    rows = event_rows(engine, ids)
    out = []
    for event_id in ids:
        row = rows.get(event_id)
        if row is None:
            out.append(f"{event_id}: NO LEDGER ROW (the message never reached a worker)")
        else:
            keep = ("status", "recovery_point", "attempts", "transient_failures", "redrives",
                    "locked_by", "locked_until", "next_attempt_at", "last_error", "error_code")
            out.append(f"{event_id}: " + ", ".join(f"{k}={row[k]!r}" for k in keep))
        lines = [line for line in logs.splitlines() if event_id in line]
        out.extend(f"    {line[:300]}" for line in lines[-8:])
    return "\n".join(out)
