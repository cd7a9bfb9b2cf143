"""`payworker migrate`: create the database if needed, then upgrade the schema to head."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    """An Alembic config pointing at our migrations and at `database_url`."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def create_database_if_missing(database_url: str) -> bool:
    """Create the target database through the server's `postgres` database; True if created."""
    url = make_url(database_url)
    name = url.database
    if not name:
        raise ValueError("DATABASE_URL names no database")
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
            ).scalar()
            if exists:
                return False
            quoted = conn.dialect.identifier_preparer.quote(name)
            conn.execute(text(f"CREATE DATABASE {quoted}"))
            return True
    finally:
        admin.dispose()


def migrate(database_url: str) -> bool:
    """Bring the database to the newest schema; safe to run again. True if it was created."""
    created = create_database_if_missing(database_url)
    command.upgrade(alembic_config(database_url), "head")
    return created
