"""`payworker migrate`: create the database if needed, upgrade the schema to head, and
give runtime roles exactly the privileges they need (`--grant ROLE`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

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


# What a runtime role (worker, beat, metrics, Flower, the operator commands) may do on
# payworker's tables: read, add and change rows. payworker never deletes a row (removed
# cards keep theirs, the ledger keeps every event), so no DELETE; no TRUNCATE, REFERENCES
# or TRIGGER; and no DDL: the role owns nothing and gets no CREATE anywhere.
RUNTIME_TABLE_PRIVILEGES = "SELECT, INSERT, UPDATE"
RUNTIME_SEQUENCE_PRIVILEGES = "USAGE, SELECT"
# Alembic's bookkeeping: readable (which schema is this?), never writable by the runtime.
ALEMBIC_VERSION_TABLE = "alembic_version"


class RoleError(Exception):
    """A role that cannot be made payworker's runtime role (missing, superuser, owner)."""


@dataclass(frozen=True)
class Grant:
    """What `grant_runtime` gave a role, and what it could not take away."""

    role: str
    database: str
    schema: str
    tables: list[str]
    sequences: list[str]
    warnings: list[str]


def grant_runtime(database_url: str, role: str) -> Grant:
    """Give an existing `role` exactly what payworker's runtime needs, as the owner of the
    schema (the caller of `payworker migrate`); safe to re-run, in one transaction.

    CONNECT on the database, USAGE on the schema, SELECT/INSERT/UPDATE on every table of
    the schema (SELECT only on alembic_version), USAGE/SELECT on its sequences. Whatever
    else the role held on them is revoked first, so re-running after a migration leaves it
    exactly that on old and new tables. Default privileges give the same on tables and
    sequences the owner creates later, so a migration's new table is usable before the
    next `migrate --grant`.

    Raises:
        RoleError: the role does not exist, is a superuser, or owns (or inherits the
            ownership of) payworker's tables: it would bypass every grant.
    """
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            return _grant(conn, role)
    finally:
        engine.dispose()


def _grant(conn: Connection, role: str) -> Grant:
    found = conn.execute(
        text("SELECT rolsuper FROM pg_roles WHERE rolname = :role"), {"role": role}
    ).first()
    if found is None:
        raise RoleError(
            f"role {role!r} does not exist: create it first (CREATE ROLE ... LOGIN PASSWORD"
            " ...; see deploy/db-roles.sh), then run `payworker migrate --grant` again"
        )
    if found.rolsuper:
        raise RoleError(f"role {role!r} is a superuser: it bypasses every grant; use a plain role")
    here = conn.execute(
        text("SELECT current_database() AS db, current_schema() AS schema, current_user AS me")
    ).one()
    database, schema, owner = str(here.db), str(here.schema), str(here.me)
    rows = conn.execute(
        text(
            "SELECT c.relname, c.relkind, pg_has_role(:role, c.relowner, 'MEMBER') AS owned"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'S')"
            " ORDER BY c.relname"
        ),
        {"role": role},
    ).all()
    owned = [row.relname for row in rows if row.owned]
    if owned:
        raise RoleError(
            f"role {role!r} owns (or is a member of the owner of) {', '.join(owned)}: an owner"
            " bypasses grants; the runtime role must be another role than the schema's owner"
        )
    quote = conn.dialect.identifier_preparer.quote
    who, where = quote(role), quote(schema)
    tables = [row.relname for row in rows if row.relkind in ("r", "p")]
    sequences = [row.relname for row in rows if row.relkind == "S"]
    statements = [
        f"GRANT CONNECT ON DATABASE {quote(database)} TO {who}",
        f"GRANT USAGE ON SCHEMA {where} TO {who}",
    ]
    for table in tables:
        name = f"{where}.{quote(table)}"
        allowed = "SELECT" if table == ALEMBIC_VERSION_TABLE else RUNTIME_TABLE_PRIVILEGES
        statements += [
            f"REVOKE ALL ON TABLE {name} FROM {who}",
            f"GRANT {allowed} ON {name} TO {who}",
        ]
    for sequence in sequences:
        name = f"{where}.{quote(sequence)}"
        statements += [
            f"REVOKE ALL ON SEQUENCE {name} FROM {who}",
            f"GRANT {RUNTIME_SEQUENCE_PRIVILEGES} ON SEQUENCE {name} TO {who}",
        ]
    future = f"ALTER DEFAULT PRIVILEGES FOR ROLE {quote(owner)} IN SCHEMA {where}"
    statements += [
        f"{future} GRANT {RUNTIME_TABLE_PRIVILEGES} ON TABLES TO {who}",
        f"{future} GRANT {RUNTIME_SEQUENCE_PRIVILEGES} ON SEQUENCES TO {who}",
    ]
    for statement in statements:
        conn.execute(text(statement))
    return Grant(role, database, schema, tables, sequences, _leftovers(conn, role, schema))


def _leftovers(conn: Connection, role: str, schema: str) -> list[str]:
    """Privileges the role still has from elsewhere (PUBLIC, another role it belongs to),
    which a grant to it cannot revoke."""
    found = conn.execute(
        text(
            "SELECT has_schema_privilege(:role, :schema, 'CREATE') AS schema_create,"
            " has_database_privilege(:role, current_database(), 'CREATE') AS db_create"
        ),
        {"role": role, "schema": schema},
    ).one()
    warnings = []
    if found.schema_create:
        warnings.append(
            f"{role} can still CREATE in schema {schema} (through PUBLIC before Postgres 15,"
            f" or another role): REVOKE CREATE ON SCHEMA {schema} FROM PUBLIC"
        )
    if found.db_create:
        warnings.append(
            f"{role} can still create schemas in this database (through PUBLIC or another"
            " role): REVOKE CREATE ON DATABASE ... FROM PUBLIC"
        )
    return warnings
