"""Reading the ledger: `payworker events list`, `events show` and `status`."""

from __future__ import annotations

import json
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer
from rich.markup import escape

from core.settings import get_settings
from db.models import EventStatus
from db.queries import event_record, list_events, status_overview
from db.refusals import refusal_summary
from db.session import get_engine
from tasks.messages import MESSAGE_TYPES
from worker.cli.base import console, errors
from worker.views import (
    age_text,
    duty_health,
    duty_lines,
    duty_warnings,
    event_json,
    event_line_json,
    events_table,
    refusals_json,
    refusals_line,
    status_json,
    status_table,
)

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def events_list(
    status: Annotated[
        EventStatus | None, typer.Option("--status", help="only events in this status")
    ] = None,
    type_: Annotated[
        str | None, typer.Option("--type", help="only this message type, e.g. charge_requested")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", help="changed since: 30m, 2h, 1d, 1w or an ISO time"),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="at most this many")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="a JSON array, for scripts")] = False,
) -> None:
    """List events, most recently changed first."""
    if type_ is not None and type_ not in MESSAGE_TYPES:
        errors.print(f"unknown --type {type_!r}; one of: {', '.join(MESSAGE_TYPES)}")
        raise typer.Exit(2)
    try:
        cutoff = parse_since(since) if since is not None else None
    except ValueError as exc:
        errors.print(escape(str(exc)), soft_wrap=True)
        raise typer.Exit(2) from None
    with get_engine(get_settings().database_url).connect() as conn:
        lines = list_events(
            conn,
            status=status.value if status is not None else None,
            type_=type_,
            since=cutoff,
            limit=limit,
        )
    moment = datetime.now(UTC)
    if as_json:
        print(json.dumps([event_line_json(line, moment) for line in lines], indent=2))
        return
    console.print(events_table(console, lines, moment))
    shown = f"{len(lines)} event(s)" + (" (--limit reached)" if len(lines) == limit else "")
    console.print(shown)


def parse_since(text: str, moment: datetime | None = None) -> datetime:
    """`30m`, `2h`, `1d`, `1w` ago, or an ISO 8601 time (UTC when it has no offset).

    Raises:
        ValueError: neither form.
    """
    moment = moment or datetime.now(UTC)
    relative = _RELATIVE.match(text)
    if relative:
        amount, unit = float(relative.group(1)), relative.group(2).lower()
        return moment - timedelta(seconds=amount * _UNIT_SECONDS[unit])
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"--since {text!r}: expected e.g. 30m, 2h, 1d, 1w or an ISO time"
            " like 2024-05-01T12:00:00+00:00"
        ) from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def events_show(event_id: str) -> None:
    """Print one ledger row as JSON; exit 1 if unknown."""
    with get_engine(get_settings().database_url).connect() as conn:
        record = event_record(conn, event_id)
    if record is None:
        print(f"unknown event {event_id!r}", file=sys.stderr)
        raise typer.Exit(1)
    print(json.dumps(event_json(record), indent=2, sort_keys=True))


def status(
    as_json: Annotated[bool, typer.Option("--json", help="JSON for scripts")] = False,
) -> None:
    """Events by type and status, retries due, the oldest unfinished event, who leads
    the sweep of PAYWORKER_QUEUE (a warning when it has not run for too long), and the
    messages refused as not authenticated."""
    settings = get_settings()
    with get_engine(settings.database_url).connect() as conn:
        overview = status_overview(conn, queue=settings.queue)
        refused = refusal_summary(conn)
    duties = duty_health(overview, settings)
    warnings = duty_warnings(duties, settings.queue)
    if as_json:
        shown = {**status_json(overview, duties, warnings), "refused": refusals_json(refused)}
        print(json.dumps(shown, indent=2))
        return
    console.print(status_table(overview))
    dead = overview.by_status(EventStatus.DEAD)
    if dead:
        console.print(
            f"[bold red]dead: {dead}[/bold red] gave up after transient failures; see"
            " `payworker events list --status dead`, then `payworker replay ID`",
            soft_wrap=True,
        )
    else:
        console.print("[green]dead: 0[/green]")
    console.print(
        f"retry due now: {overview.retry_due}   waiting for a later retry:"
        f" {overview.retry_waiting}   running: {overview.running}"
        + (
            f"   [red]lease expired: {overview.lease_expired}[/red]"
            if overview.lease_expired
            else ""
        ),
        soft_wrap=True,
    )
    console.print(refusals_line(refused, overview.moment), soft_wrap=True)
    oldest = overview.oldest_unfinished
    if oldest is None:
        console.print("no unfinished events")
    else:
        age = overview.moment - oldest.created_at
        console.print(
            f"oldest unfinished: {escape(oldest.event_id)} ({oldest.type},"
            f" {oldest.status}, {age_text(age)} old, {oldest.attempts} attempt(s))",
            soft_wrap=True,
        )
    for line in duty_lines(duties, overview.moment):
        console.print(escape(line), soft_wrap=True)
    for warning in warnings:
        console.print(f"[bold red]WARNING: {escape(warning)}[/bold red]", soft_wrap=True)
