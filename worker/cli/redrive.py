"""Re-driving the ledger's events: `payworker replay` and `sweep`."""

from __future__ import annotations

import getpass
from functools import cache
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from core.redact import redact
from core.settings import get_settings
from db.session import get_engine
from tasks.maintenance import redrive_publisher, run_sweep
from tasks.replay import Refused, ReplayOutcome, ask_stripe
from tasks.replay import replay as reopen
from tasks.resources import build_gateway
from tasks.telemetry import NoTelemetry
from worker.cli.base import celery_app, console, errors

# What the replay history keeps of --reason and --operator (ledger rows stay small).
MAX_REASON = 500
MAX_OPERATOR = 100


def replay(
    event_ids: Annotated[list[str], typer.Argument(help="event ids to replay")],
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="also replay FAILED events, as a new generation with new idempotency keys"
            " (needs --reason)",
        ),
    ] = False,
    reason: Annotated[
        str | None,
        typer.Option(
            "--reason", help="why: kept in each event's replay history; required with --force"
        ),
    ] = None,
    operator: Annotated[
        str | None,
        typer.Option(
            "--operator", help="who replays, kept in the replay history (default: the OS user)"
        ),
    ] = None,
) -> None:
    """Re-drive dead events from their recovery point with the same idempotency keys.

    Succeeded events are refused; failed ones too unless --force (with --reason).

    A forced charge is refused if Stripe holds a succeeded charge of it.

    Exit 1 if any is refused.
    """
    reason = redact(reason.strip())[:MAX_REASON] if reason and reason.strip() else None
    if force and reason is None:
        errors.print(
            "replay --force needs --reason TEXT: a forced replay acts on Stripe again (a new"
            " charge, card or customer), and the event's history must say why",
            soft_wrap=True,
        )
        raise typer.Exit(2)
    who = redact(operator.strip())[:MAX_OPERATOR] if operator and operator.strip() else os_user()
    settings = get_settings()
    engine = get_engine(settings.database_url)
    stripe = cache(lambda: build_gateway(settings, NoTelemetry())[0])
    app = celery_app()
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
        publish = redrive_publisher(app, settings.queue, producer, settings.message_keyring)

        for event_id in unique:
            try:
                # Stripe is asked before the transaction: no row lock waits on Stripe.
                checked = ask_stripe(engine, stripe, event_id) if force else None
                with engine.begin() as conn:
                    outcome = reopen(
                        conn,
                        event_id,
                        force=force,
                        queue=settings.queue,
                        publish=publish,
                        grace_seconds=settings.redrive_after_seconds,
                        operator=who,
                        reason=reason,
                        checked=checked,
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
    if isinstance(outcome, Refused):
        console.print(
            f"[yellow]refused {escape(outcome.event_id)}: {escape(outcome.reason)}[/yellow]",
            soft_wrap=True,
        )
        return 1
    keys = escape(outcome.keys)
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


def os_user() -> str:
    """Who runs this command, as the OS says (getpass: $LOGNAME, $USER, … or the uid's name)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no such variable and no passwd entry (a bare container)
        return "unknown"


def sweep() -> None:
    """Run one sweeper pass now: re-drive due retries and abandoned events."""
    settings = get_settings()
    report = run_sweep(celery_app(), settings, get_engine(settings.database_url))
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(report.reasons.items())) or "nothing due"
    console.print(f"re-drove {len(report.redriven)} event(s) ({reasons})")
