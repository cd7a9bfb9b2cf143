"""`payworker publish`: one message onto the queue, validated as a worker would."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from core.errors import InvalidMessage
from core.settings import get_settings
from worker.cli.base import celery_app, console
from worker.publisher import publish as send


def publish(
    message_type: Annotated[str, typer.Argument(help="e.g. charge_requested")],
    json_body: Annotated[str, typer.Option("--json", help="the message's keyword arguments")],
) -> None:
    """Validate and publish one message."""
    try:
        kwargs = json.loads(json_body)
    except json.JSONDecodeError as exc:
        console.print(f"[red]--json is not valid JSON: {exc}[/red]")
        raise typer.Exit(2) from None
    if not isinstance(kwargs, dict):
        console.print("[red]--json must be a JSON object[/red]")
        raise typer.Exit(2)
    try:
        task_id = send(celery_app(), message_type, kwargs, get_settings().queue)
    except KeyError:
        console.print(f"[red]unknown message type {message_type!r}[/red]")
        raise typer.Exit(2) from None
    except InvalidMessage as exc:
        console.print(f"[red]invalid message: {exc.message}[/red]")
        raise typer.Exit(2) from None
    console.print(task_id)
