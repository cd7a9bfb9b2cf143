"""The `payworker` command: its commands, in the order `--help` lists them, and `main`.

The commands live by what they work on: `running` (worker, metrics, flower, demo),
`ledger` (events, status), `redrive` (replay, sweep), `publishing`, `schema` (migrate)."""

from __future__ import annotations

import sys

import typer
from rich.markup import escape
from sqlalchemy.exc import ProgrammingError, SQLAlchemyError

from core.redact import redact
from worker.cli import ledger, publishing, redrive, running, schema
from worker.cli.base import errors

# Arguments the command does not know pass through to Celery or Flower (`ctx.args`).
PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}

cli = typer.Typer(
    help="payworker: Stripe payment operations from a queue, exactly once.",
    no_args_is_help=True,
    add_completion=False,
    # A traceback's locals can hold DATABASE_URL with its password, or the Stripe key.
    pretty_exceptions_show_locals=False,
)
cli.command()(schema.migrate)
cli.command(context_settings=PASS_THROUGH)(running.worker)
cli.command()(running.metrics)
cli.command()(redrive.sweep)
cli.command(context_settings=PASS_THROUGH)(running.flower)
cli.command()(publishing.publish)
cli.command()(redrive.replay)
cli.command()(ledger.status)
cli.command()(running.demo)

events_cli = typer.Typer(help="Inspect ledger events.", no_args_is_help=True)
events_cli.command("list")(ledger.events_list)
events_cli.command("show")(ledger.events_show)
cli.add_typer(events_cli, name="events")


def main() -> None:
    """Run the command; a database error ends it with one line and exit code 1."""
    try:
        cli()
    except SQLAlchemyError as exc:
        # An operator needs the cause in one line, not a page of SQLAlchemy frames.
        cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        errors.print(f"[red]database error: {escape(redact(cause))}[/red]", soft_wrap=True)
        if isinstance(exc, ProgrammingError):
            errors.print("is the schema at head? run `payworker migrate`")
        sys.exit(1)
