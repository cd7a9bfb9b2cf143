"""`payworker migrate`: the database, its schema and its runtime roles' privileges."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from core.settings import get_settings
from worker.cli.base import console, errors


def migrate(
    grant: Annotated[
        list[str] | None,
        typer.Option(
            "--grant",
            metavar="ROLE",
            help="after migrating, give this existing role exactly what the worker, metrics"
            " and Flower need (SELECT/INSERT/UPDATE, no DELETE, no DDL); repeatable",
        ),
    ] = None,
) -> None:
    """Create the database if missing, upgrade the schema to head, grant runtime roles.

    All safe to re-run. Run it as the schema's owner; --grant ROLE needs an existing role.
    """
    # Alembic takes 50 ms to import: only this command pays for it.
    from db.migrate import RoleError, grant_runtime
    from db.migrate import migrate as run

    url = get_settings().database_url
    created = run(url)
    console.print(("created database; " if created else "") + "schema is at head")
    for role in dict.fromkeys(grant or []):
        try:
            done = grant_runtime(url, role)
        except RoleError as exc:
            errors.print(
                f"[red]cannot grant to {escape(role)}: {escape(str(exc))}[/red]", soft_wrap=True
            )
            raise typer.Exit(1) from None
        console.print(
            f"granted {escape(role)}: CONNECT on {escape(done.database)}, USAGE on schema"
            f" {escape(done.schema)}, SELECT/INSERT/UPDATE on {len(done.tables)} table(s)"
            f" ({escape(', '.join(done.tables))}), USAGE/SELECT on {len(done.sequences)}"
            " sequence(s); the same on tables created later",
            soft_wrap=True,
        )
        for warning in done.warnings:
            errors.print(f"[yellow]warning: {escape(warning)}[/yellow]", soft_wrap=True)
