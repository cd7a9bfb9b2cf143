"""The `payworker` command."""

from __future__ import annotations

import json
import os
import sys
import threading
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from core.settings import get_settings
from db.models import EventStatus
from worker.views import age_text, events_table, status_table

if TYPE_CHECKING:
    from tasks.replay import ReplayOutcome

cli = typer.Typer(
    help="payworker: Stripe payment operations from a queue, exactly once.",
    no_args_is_help=True,
    add_completion=False,
    # A traceback's locals can hold DATABASE_URL with its password, or the Stripe key.
    pretty_exceptions_show_locals=False,
)
events_cli = typer.Typer(help="Inspect ledger events.", no_args_is_help=True)
cli.add_typer(events_cli, name="events")
console = Console()
errors = Console(stderr=True)


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
    settings = get_settings()
    _share_metrics(settings.metrics_path)
    from worker.app import app

    argv = ["worker", "-Q", settings.queue, "--loglevel", "INFO", "-E", *ctx.args]
    if beat:
        argv.append("--beat")
    app.worker_main(argv)


def _share_metrics(path: str) -> None:
    """Put every process of this worker in prometheus_client's multiprocess mode, writing
    to `path`, before the library is imported (it reads the variable at import)."""
    os.makedirs(path, exist_ok=True)
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", path)


@cli.command()
def metrics(
    port: Annotated[int | None, typer.Option(help="default PAYWORKER_METRICS_PORT")] = None,
) -> None:
    """Serve Prometheus metrics: the workers' counters and the ledger's backlog."""
    settings = get_settings()
    _share_metrics(settings.metrics_path)
    from prometheus_client import start_http_server

    from db.session import get_engine
    from worker.metrics import registry_for_scrape

    registry = registry_for_scrape(get_engine(settings.database_url), settings.metrics_path)
    bound = port or settings.metrics_port
    start_http_server(bound, addr=settings.metrics_address, registry=registry)
    console.print(f"serving metrics on http://{settings.metrics_address}:{bound}/metrics")
    threading.Event().wait()


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


@cli.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def flower(
    ctx: typer.Context,
    unauthenticated: Annotated[
        bool,
        typer.Option(
            "--unauthenticated",
            help="run without basic auth (only behind a proxy that authenticates)",
        ),
    ] = False,
    allow_control: Annotated[
        bool,
        typer.Option(
            "--allow-control",
            help="let Flower users publish tasks and control workers (read-only by default)",
        ),
    ] = False,
) -> None:
    """Start Flower on the configured broker: basic auth, persistent, 127.0.0.1:5555.

    Extra `--name=value` options go to Flower and override ours, e.g. `--port=5566`.
    """
    from worker.flower import FlowerRefused, flower_argv, state_file

    settings = get_settings()
    try:
        argv = flower_argv(
            settings,
            unauthenticated=unauthenticated,
            allow_control=allow_control,
            extra=list(ctx.args),
        )
    except FlowerRefused as exc:
        errors.print(f"[red]{escape(str(exc))}[/red]", soft_wrap=True)
        raise typer.Exit(2) from None
    if settings.flower_basic_auth is None:
        errors.print(
            "[bold red]WARNING: Flower runs WITHOUT authentication (--unauthenticated):"
            " anyone who reaches the port sees every payment task[/bold red]",
            soft_wrap=True,
        )
    state_file(settings).parent.mkdir(parents=True, exist_ok=True)
    from worker.app import app

    raise typer.Exit(app.start(argv) or 0)


@cli.command()
def publish(
    message_type: Annotated[str, typer.Argument(help="e.g. charge_requested")],
    json_body: Annotated[str, typer.Option("--json", help="the message's keyword arguments")],
) -> None:
    """Validate and publish one message."""
    from core.errors import InvalidMessage
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


@events_cli.command("list")
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
    from db.session import get_engine
    from tasks.messages import MESSAGE_TYPES
    from worker.queries import list_events, parse_since

    if type_ is not None and type_ not in MESSAGE_TYPES:
        errors.print(f"unknown --type {type_!r}; one of: {', '.join(MESSAGE_TYPES)}")
        raise typer.Exit(2)
    try:
        cutoff = parse_since(since) if since is not None else None
    except ValueError as exc:
        errors.print(escape(str(exc)), soft_wrap=True)
        raise typer.Exit(2) from None
    lines = list_events(
        get_engine(get_settings().database_url),
        status=status.value if status is not None else None,
        type_=type_,
        since=cutoff,
        limit=limit,
    )
    moment = datetime.now(UTC)
    if as_json:
        print(json.dumps([line.as_json(moment) for line in lines], indent=2))
        return
    console.print(events_table(console, lines, moment))
    shown = f"{len(lines)} event(s)" + (" (--limit reached)" if len(lines) == limit else "")
    console.print(shown)


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
def replay(
    event_ids: Annotated[list[str], typer.Argument(help="event ids to replay")],
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="also replay FAILED events, as a new generation with new idempotency keys",
        ),
    ] = False,
) -> None:
    """Re-drive dead events from their recovery point with the same idempotency keys.

    Succeeded events are refused; failed ones too unless --force. Exit 1 if any is refused.
    """
    from core.redact import redact
    from db.session import get_engine
    from tasks.maintenance import REDRIVE_TASK
    from tasks.replay import replay as reopen
    from worker.app import app

    settings = get_settings()
    engine = get_engine(settings.database_url)
    unique = list(dict.fromkeys(event_ids))
    not_replayed = 0
    progress = Progress(
        TextColumn("replaying"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        transient=True,
        disable=len(unique) < 2 or not console.is_terminal,
    )
    with app.producer_or_acquire() as producer, progress:
        bar = progress.add_task("replay", total=len(unique))

        def publish(event_id: str) -> None:
            app.send_task(
                REDRIVE_TASK,
                kwargs={"event_id": event_id},
                queue=settings.queue,
                producer=producer,
            )

        for event_id in unique:
            try:
                with engine.begin() as conn:
                    outcome = reopen(
                        conn,
                        event_id,
                        force=force,
                        queue=settings.queue,
                        publish=publish,
                        grace_seconds=settings.redrive_after_seconds,
                    )
            except Exception as exc:  # the row is rolled back: nothing changed
                not_replayed += 1
                error = redact(f"{type(exc).__name__}: {exc}")[:300]
                console.print(
                    f"[red]error {escape(event_id)}: {escape(error)}[/red]", soft_wrap=True
                )
            else:
                not_replayed += _print_replay(outcome)
            progress.advance(bar)
    if not_replayed:
        raise typer.Exit(1)


def _print_replay(outcome: ReplayOutcome) -> int:
    """One line per event; returns 1 when it was not replayed."""
    from tasks.gateway import idempotency_key
    from tasks.replay import Refused

    if isinstance(outcome, Refused):
        console.print(
            f"[yellow]refused {escape(outcome.event_id)}: {escape(outcome.reason)}[/yellow]",
            soft_wrap=True,
        )
        return 1
    keys = escape(idempotency_key(outcome.event_id, "{step}", outcome.generation))
    where = "" if outcome.published else f" (left to the sweeper of queue {outcome.queue})"
    if outcome.new_generation:
        console.print(
            f"[bold red]replayed {escape(outcome.event_id)}: {outcome.was} -> generation"
            f" {outcome.generation} from {outcome.recovery_point} with NEW idempotency keys"
            f" {keys}: Stripe acts again (a new charge/card/customer is possible); the"
            f" earlier outcome is kept in progress.replays{escape(where)}"
            "[/bold red]",
            soft_wrap=True,
        )
    else:
        console.print(
            f"[green]replayed {escape(outcome.event_id)}: {outcome.was} -> processing, resuming"
            f" at {outcome.recovery_point} with the same idempotency keys {keys}"
            f"{escape(where)}[/green]",
            soft_wrap=True,
        )
    return 0


@cli.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="JSON for scripts")] = False,
) -> None:
    """Events by type and status, retries due, and the oldest unfinished event."""
    from db.session import get_engine
    from worker.queries import status_overview

    overview = status_overview(get_engine(get_settings().database_url))
    if as_json:
        print(json.dumps(overview.as_json(), indent=2))
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
    oldest = overview.oldest_unfinished
    if oldest is None:
        console.print("no unfinished events")
    else:
        age = overview.moment - datetime.fromisoformat(oldest["created_at"])
        console.print(
            f"oldest unfinished: {escape(oldest['event_id'])} ({oldest['type']},"
            f" {oldest['status']}, {age_text(age)} old, {oldest['attempts']} attempt(s))",
            soft_wrap=True,
        )


@cli.command()
def demo(
    users: Annotated[int, typer.Option(help="users in the demo batch")] = 5,
) -> None:
    """Run a demo batch through a real worker and print a summary from Postgres."""
    from worker.demo import run_demo

    raise typer.Exit(run_demo(users=users, console=console))


def main() -> None:
    from sqlalchemy.exc import ProgrammingError, SQLAlchemyError

    from core.redact import redact

    try:
        cli()
    except SQLAlchemyError as exc:
        # An operator needs the cause in one line, not a page of SQLAlchemy frames.
        cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        errors.print(f"[red]database error: {escape(redact(cause))}[/red]", soft_wrap=True)
        if isinstance(exc, ProgrammingError):
            errors.print("is the schema at head? run `payworker migrate`")
        sys.exit(1)


if __name__ == "__main__":
    main()
