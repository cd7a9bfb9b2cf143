"""Renderings of the ledger for the `payworker` command: Rich tables for people, JSON for
scripts (`--json`, `events show`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from core.redact import redact
from core.settings import Settings
from db.duties import DutyRow
from db.models import EventStatus
from db.queries import EventLine, EventRecord, StatusOverview
from db.refusals import RefusalSummary

SEALED_MARKER = "<sealed>"  # stands where the ciphertext of a card token is kept

STATUS_COLOURS = {
    EventStatus.RECEIVED: "blue",
    EventStatus.PROCESSING: "cyan",
    EventStatus.ACTION_REQUIRED: "magenta",
    EventStatus.SUCCEEDED: "green",
    EventStatus.FAILED: "yellow",
    EventStatus.DEAD: "bold red",
}


def status_table(overview: StatusOverview) -> Table:
    table = Table(title="payment events by type and status", box=box.SIMPLE_HEAVY, pad_edge=False)
    table.add_column("type", no_wrap=True)
    for state in EventStatus:
        table.add_column(
            state.value,
            justify="right",
            style=STATUS_COLOURS[state],
            no_wrap=True,
            min_width=len(state.value),
        )
    table.add_column("total", justify="right", style="bold", no_wrap=True)

    def cells(counts: list[int]) -> list[str]:
        out = []
        for state, n in zip(EventStatus, counts, strict=True):
            if state == EventStatus.DEAD and n > 0:
                out.append(f"[reverse]{n}[/reverse]")
            else:
                out.append(str(n) if n else "[dim]0[/dim]")
        return [*out, str(sum(counts))]

    for type_ in overview.types:
        table.add_row(type_, *cells([overview.counts.get((type_, s), 0) for s in EventStatus]))
    table.add_section()
    table.add_row("all", *cells([overview.by_status(s) for s in EventStatus]))
    return table


# `events list` columns in display order; the optional ones are dropped, last first, when
# the terminal is too narrow (`--json` and `events show` always have everything).
EVENT_COLUMNS = ("event_id", "type", "user_id", "status", "error_code", "att", "age", "last error")
OPTIONAL_COLUMNS = ("type", "user_id")
MAX_ERROR_WIDTH = 60
MIN_ERROR_WIDTH = 16


def events_table(console: Console, lines: list[EventLine], moment: datetime) -> Table:
    rows: list[dict[str, Text]] = []  # Text: ids are not markup
    for line in lines:
        error = " ".join((line.last_error or line.error_message or "").split())
        rows.append(
            {
                "event_id": Text(line.event_id),
                "type": Text(line.type),
                "user_id": Text(line.user_id or "-"),
                "status": Text(line.status, style=STATUS_COLOURS.get(EventStatus(line.status), "")),
                "error_code": Text(line.error_code or ""),
                "att": Text(str(line.attempts)),
                "age": Text(age_text(moment - line.created_at)),
                "last error": Text(error),
            }
        )

    def build(columns: list[str], error_width: int | None = None) -> Table:
        table = Table(box=box.SIMPLE, pad_edge=False)
        for name in EVENT_COLUMNS:
            if name in columns:
                table.add_column(
                    name,
                    justify="right" if name in ("att", "age") else "left",
                    # An event id must stay whole: it folds rather than being cut.
                    overflow="fold" if name == "event_id" else "ellipsis",
                    no_wrap=name != "event_id",
                    max_width=error_width if name == "last error" else None,
                )
        for row in rows:
            table.add_row(*(row[name] for name in EVENT_COLUMNS if name in columns))
        return table

    def natural_width(columns: list[str]) -> int:
        unbounded = console.options.update_width(1_000_000)
        return console.measure(build(columns), options=unbounded).maximum

    # The event id whole and why it stopped come first, then who and what.
    gap = 3  # between two columns of box.SIMPLE
    columns = [c for c in EVENT_COLUMNS if c not in (*OPTIONAL_COLUMNS, "last error")]
    for optional in OPTIONAL_COLUMNS:
        if natural_width([*columns, optional]) + gap + MIN_ERROR_WIDTH <= console.width:
            columns.append(optional)
    room = console.width - natural_width(columns) - gap
    if room >= MIN_ERROR_WIDTH:
        return build([*columns, "last error"], error_width=min(MAX_ERROR_WIDTH, room))
    return build(columns)


def age_text(delta: timedelta) -> str:
    """3d04h, 2h05m, 4m12s, 9s."""
    seconds = max(0, int(delta.total_seconds()))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def event_json(record: EventRecord) -> dict[str, Any]:
    """A ledger row as JSON-ready data, every column in table order (the sealed card token
    only as a marker: ciphertext is nothing an operator can use; client secrets masked)."""
    out: dict[str, Any] = {}
    for column in fields(record):
        value = getattr(record, column.name)
        if column.name == "sealed":
            out["sealed_token"] = SEALED_MARKER if value else None
        elif column.name == "result" and value is not None:
            # An event waiting for its customer keeps the client secret the app needs in
            # its result; an operator's terminal is no place for it.
            out["result"] = json.loads(redact(json.dumps(value)))
        else:
            out[column.name] = _jsonable(value)
    return out


def event_line_json(line: EventLine, moment: datetime) -> dict[str, Any]:
    """One element of `events list --json`: the line and its age at `moment`."""
    out = {column.name: _jsonable(getattr(line, column.name)) for column in fields(line)}
    out["age_seconds"] = round((moment - line.created_at).total_seconds(), 3)
    return out


def status_json(
    overview: StatusOverview,
    duties: list[DutyHealth] | None = None,
    warnings: list[str] | None = None,
) -> dict[str, Any]:
    """`status --json`: counts by type and status (every status, zeros included), the
    queue's periodic duties and the warnings about them."""
    matrix: dict[str, dict[str, int]] = {
        t: {s.value: overview.counts.get((t, s), 0) for s in EventStatus} for t in overview.types
    }
    oldest = overview.oldest_unfinished
    return {
        "at": overview.moment.isoformat(),
        "counts": matrix,
        "totals": {s.value: overview.by_status(s) for s in EventStatus},
        "dead": overview.by_status(EventStatus.DEAD),
        "retry_due": overview.retry_due,
        "retry_waiting": overview.retry_waiting,
        "running": overview.running,
        "lease_expired": overview.lease_expired,
        "oldest_unfinished": event_json(oldest) if oldest is not None else None,
        "duties": [duty_json(health) for health in duties or []],
        "warnings": list(warnings or []),
    }


# ---- periodic duties ------------------------------------------------------------------------

# How a duty's result reads in `payworker status`.
_RESULT_WORDS = {"redriven": "re-drove", "erased": "erased"}


@dataclass(frozen=True)
class DutyHealth:
    """A periodic duty as of `payworker status`: how long ago it last ran, and whether that
    is longer than it may be (then nobody leads it, or its leader cannot do it)."""

    row: DutyRow
    # Since its last run; before a first run, since its leader took over.
    age: timedelta | None
    stale_after: float

    @property
    def stale(self) -> bool:
        return self.age is None or self.age.total_seconds() > self.stale_after


def duty_health(overview: StatusOverview, settings: Settings) -> list[DutyHealth]:
    out = []
    for row in overview.duties:
        since = row.last_run_at or row.leader_since
        age = overview.moment - since if since is not None else None
        out.append(DutyHealth(row, age, settings.duty_stale_after(row.period_seconds)))
    return out


def duty_warnings(duties: list[DutyHealth], queue: str) -> list[str]:
    """What an operator must look at: the sweep (or another duty) is not running."""
    if not any(h.row.name == "sweep" for h in duties):
        return [
            f"no sweep recorded for queue {queue}: no worker of this version has run on it;"
            " retries and re-drives are published only while a worker runs"
        ]
    warnings = []
    for health in duties:
        if not health.stale:
            continue
        row = health.row
        when = f"for {age_text(health.age)}" if health.age is not None else "ever"
        leader = _leader_text(row)
        text = (
            f"no {row.name} run on queue {queue} {when} (it runs every"
            f" {row.period_seconds:g}s; warned after {health.stale_after:g}s); leader: {leader}"
        )
        if row.name == "sweep":
            text += ": retries and re-drives are not being published. Is a worker running?"
        else:
            text += "."
        if row.last_error:
            text += f" Last error: {row.last_error}"
        warnings.append(text)
    return warnings


def duty_lines(duties: list[DutyHealth], moment: datetime) -> list[str]:
    """One line per duty: who leads it since when, its last run and what it did."""
    lines = []
    for health in duties:
        row = health.row
        line = f"{row.name} of queue {row.queue}: leader {_leader_text(row)}"
        if row.leader is not None and row.leader_since is not None and row.lock_held:
            line += f" for {age_text(moment - row.leader_since)}"
        if row.last_run_at is None:
            line += "; never run"
        else:
            line += f"; last run {age_text(moment - row.last_run_at)} ago"
            if row.last_result:
                done = ", ".join(
                    f"{_RESULT_WORDS.get(k, k)} {v}" for k, v in row.last_result.items()
                )
                line += f" ({done})"
        if row.last_error_at is not None and (
            row.last_run_at is None or row.last_error_at > row.last_run_at
        ):
            line += f"; failing since {age_text(moment - row.last_error_at)} ago"
        lines.append(line)
    return lines


def _leader_text(row: DutyRow) -> str:
    if not row.lock_held:
        gone = f" ({row.leader} is gone)" if row.leader else ""
        return f"none: no worker holds the lead{gone}"
    return row.leader or "a worker that has not recorded itself yet"


def duty_json(health: DutyHealth) -> dict[str, Any]:
    row = health.row
    out = {column.name: _jsonable(getattr(row, column.name)) for column in fields(row)}
    age = health.age.total_seconds() if health.age is not None else None
    out["last_run_age_seconds"] = round(age, 3) if age is not None else None
    out["stale_after_seconds"] = health.stale_after
    out["stale"] = health.stale
    return out


# ---- refused (not authenticated) messages ---------------------------------------------------


def refusals_json(summary: RefusalSummary) -> dict[str, Any]:
    """`status --json`, "refused": messages refused as not authenticated, by reason."""
    return {
        "today": summary.today_total,
        f"last_{summary.days}_days": summary.recent_total,
        "by_reason": dict(sorted(summary.recent.items())),
        "last_at": summary.last_at.isoformat() if summary.last_at else None,
    }


def refusals_line(summary: RefusalSummary, moment: datetime) -> str:
    """`status`: one line about refused (not authenticated) messages, red when any."""
    if not summary.recent_total:
        return f"[green]refused (not authenticated): 0 in {summary.days} days[/green]"
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(summary.recent.items()))
    last = f"; last {age_text(moment - summary.last_at)} ago" if summary.last_at else ""
    return (
        f"[bold red]refused (not authenticated): {summary.today_total} today,"
        f" {summary.recent_total} in {summary.days} days ({reasons}){last}[/bold red];"
        " see docs/operations.md, refused messages"
    )
