"""Running payworker's processes: `payworker worker`, `metrics`, `flower` and `demo`."""

from __future__ import annotations

import os
import threading
from typing import Annotated

import typer
from rich.markup import escape

from core.settings import get_settings
from db.session import get_engine
from worker.cli.base import celery_app, console, errors
from worker.flower import FlowerRefused, flower_argv, install_event_filter, state_file


def worker(
    ctx: typer.Context,
    beat: Annotated[
        bool,
        typer.Option(
            "--beat", help="accepted for compatibility; no longer needed: every worker sweeps"
        ),
    ] = False,
) -> None:
    """Start a worker on PAYWORKER_QUEUE; extra arguments go to `celery worker`.

    Every worker takes part in the periodic duties (retries, re-drives): one of them leads.
    """
    settings = get_settings()
    share_metrics(settings.metrics_path)
    if beat:
        errors.print(
            "--beat is no longer needed and is ignored: every worker takes part in the"
            " sweep, one of them at a time (see `payworker status`)"
        )
    argv = ["worker", "-Q", settings.queue, "--loglevel", "INFO", "-E", *ctx.args]
    celery_app().worker_main(argv)


def share_metrics(path: str) -> None:
    """Put every process of this worker in prometheus_client's multiprocess mode, writing
    to `path`, before the library is imported (it reads the variable at import)."""
    os.makedirs(path, exist_ok=True)
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", path)


def metrics(
    port: Annotated[int | None, typer.Option(help="default PAYWORKER_METRICS_PORT")] = None,
) -> None:
    """Serve Prometheus metrics: the workers' counters and the ledger's backlog."""
    settings = get_settings()
    share_metrics(settings.metrics_path)
    # After share_metrics: prometheus_client reads PROMETHEUS_MULTIPROC_DIR at import.
    from prometheus_client import start_http_server

    from worker.metrics import registry_for_scrape

    registry = registry_for_scrape(get_engine(settings.database_url), settings.metrics_path)
    bound = port or settings.metrics_port
    start_http_server(bound, addr=settings.metrics_address, registry=registry)
    console.print(f"serving metrics on http://{settings.metrics_address}:{bound}/metrics")
    threading.Event().wait()


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
    install_event_filter()
    raise typer.Exit(celery_app().start(argv) or 0)


def demo(
    users: Annotated[int, typer.Option(help="users in the demo batch")] = 5,
) -> None:
    """Run a demo batch through a real worker and print a summary from Postgres."""
    # The demo's modules bring Alembic (60 ms to import) and use the Stripe fake of an
    # optional extra: only `payworker demo` imports them.
    from worker.demo import run_demo

    raise typer.Exit(run_demo(users=users, console=console))
