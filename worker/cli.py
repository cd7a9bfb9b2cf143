"""The `payworker` command."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from worker.settings import get_settings

cli = typer.Typer(
    help="payworker: Stripe payment operations from a queue, exactly once.",
    no_args_is_help=True,
    add_completion=False,
)
events_cli = typer.Typer(help="Inspect ledger events.", no_args_is_help=True)
cli.add_typer(events_cli, name="events")
console = Console()


@cli.command()
def migrate() -> None:
    """Create the database if missing and upgrade the schema to head (safe to re-run)."""
    from db.migrate import migrate as run

    created = run(get_settings().database_url)
    console.print(("created database; " if created else "") + "schema is at head")


@cli.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def worker(
    ctx: typer.Context,
    beat: Annotated[
        bool, typer.Option("--beat", help="also run the sweeper schedule in this worker")
    ] = False,
) -> None:
    """Start a worker on PAYWORKER_QUEUE; extra arguments go to `celery worker`.

    Retries are published by the sweeper: run one `--beat` worker, or `celery -A worker beat`.
    """
    from worker.app import app

    settings = get_settings()
    argv = ["worker", "-Q", settings.queue, "--loglevel", "INFO", "-E", *ctx.args]
    if beat:
        argv.append("--beat")
    app.worker_main(argv)


@cli.command()
def sweep() -> None:
    """Run one sweeper pass now: re-drive due retries and abandoned events."""
    from db.session import get_engine
    from tasks.maintenance import run_sweep
    from worker.app import app

    settings = get_settings()
    report = run_sweep(app, settings, get_engine(settings.database_url))
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(report.reasons.items())) or "nothing due"
    console.print(f"re-drove {len(report.redriven)} event(s) ({reasons})")


@cli.command()
def publish(
    message_type: Annotated[str, typer.Argument(help="e.g. charge_requested")],
    json_body: Annotated[str, typer.Option("--json", help="the message's keyword arguments")],
) -> None:
    """Validate and publish one message."""
    from tasks.errors import InvalidMessage
    from worker.app import app
    from worker.publisher import publish as send

    try:
        kwargs = json.loads(json_body)
    except json.JSONDecodeError as exc:
        console.print(f"[red]--json is not valid JSON: {exc}[/red]")
        raise typer.Exit(2) from None
    if not isinstance(kwargs, dict):
        console.print("[red]--json must be a JSON object[/red]")
        raise typer.Exit(2)
    try:
        task_id = send(app, message_type, kwargs, get_settings().queue)
    except KeyError:
        console.print(f"[red]unknown message type {message_type!r}[/red]")
        raise typer.Exit(2) from None
    except InvalidMessage as exc:
        console.print(f"[red]invalid message: {exc.message}[/red]")
        raise typer.Exit(2) from None
    console.print(task_id)


@events_cli.command("show")
def events_show(event_id: str) -> None:
    """Print one ledger row as JSON; exit 1 if unknown."""
    from db.session import get_engine
    from worker.queries import show_event

    event = show_event(get_engine(get_settings().database_url), event_id)
    if event is None:
        print(f"unknown event {event_id!r}", file=sys.stderr)
        raise typer.Exit(1)
    print(json.dumps(event, indent=2, sort_keys=True))


@cli.command()
def status() -> None:
    """Counts of events by type and status, and the oldest unfinished event."""
    from db.session import get_engine
    from worker.queries import status_counts

    counts, oldest = status_counts(get_engine(get_settings().database_url))
    table = Table(title="payment events")
    for column in ("type", "status", "count"):
        table.add_column(column, justify="right" if column == "count" else "left")
    colours = {"succeeded": "green", "failed": "yellow", "dead": "red"}
    for type_, state, count in counts:
        colour = colours.get(state, "cyan")
        table.add_row(type_, f"[{colour}]{state}[/{colour}]", str(count))
    console.print(table)
    if oldest is None:
        console.print("no unfinished events")
    else:
        age = datetime.now(UTC) - datetime.fromisoformat(oldest["created_at"])
        console.print(
            f"oldest unfinished: {oldest['event_id']} ({oldest['type']}, {oldest['status']},"
            f" {int(age.total_seconds())}s old)"
        )


@cli.command()
def demo(
    users: Annotated[int, typer.Option(help="users in the demo batch")] = 5,
) -> None:
    """Run a demo batch through a real worker and print a summary from Postgres."""
    from worker.demo import run_demo

    raise typer.Exit(run_demo(users=users, console=console))


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
