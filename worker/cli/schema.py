"""`payworker migrate`: the database and its schema."""

from __future__ import annotations

from core.settings import get_settings
from worker.cli.base import console


def migrate() -> None:
    """Create the database if missing and upgrade the schema to head (safe to re-run)."""
    # Alembic takes 50 ms to import: only this command pays for it.
    from db.migrate import migrate as run

    created = run(get_settings().database_url)
    console.print(("created database; " if created else "") + "schema is at head")
