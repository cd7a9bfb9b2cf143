"""`payworker migrate` and the Alembic migrations: the database is created, re-running is
harmless, the migrated schema is exactly the models' schema (constraints and partial unique
indexes included), and downgrade/upgrade round-trips."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import IntegrityError

from db.migrate import alembic_config, create_database_if_missing, migrate
from db.models import Base
from db.refusals import count_refusal, refusal_summary

ROOT = Path(__file__).resolve().parents[2]
PG_ADMIN_URL = os.environ.get("TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432")
PAYWORKER = Path(sys.executable).with_name("payworker")


def _exists(name: str) -> bool:
    admin = create_engine(f"{PG_ADMIN_URL}/postgres")
    try:
        with admin.connect() as conn:
            return bool(conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
            ).scalar())
    finally:
        admin.dispose()


def _drop(name: str) -> None:
    admin = create_engine(f"{PG_ADMIN_URL}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def fresh_db(database_url: str) -> Iterator[tuple[str, str]]:
    """(name, SQLAlchemy URL) of a database that does not exist yet; dropped afterwards.
    (`database_url` is requested only so a missing Postgres skips or fails like elsewhere.)"""
    name = f"payworker_migr_{uuid.uuid4().hex[:10]}"
    yield name, f"{PG_ADMIN_URL}/{name}"
    _drop(name)


def _run_migrate(database_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url, "PYTHONPATH": str(ROOT)}
    env.pop("STRIPE_API_KEY", None)  # migrating needs no Stripe key
    return subprocess.run([str(PAYWORKER), "migrate"], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def _head(url: str) -> str:
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    assert head is not None
    return head


def _version(engine: Any) -> str | None:
    with engine.connect() as conn:
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def _schema_diff(engine: Any) -> list[Any]:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))


def test_migrate_command_creates_the_database_and_is_safe_to_rerun(fresh_db):
    # Given a database name that does not exist, given as a plain postgresql:// URL
    name, url = fresh_db
    assert not _exists(name)
    plain_url = url.replace("postgresql+psycopg://", "postgresql://")
    # When `payworker migrate` runs twice
    first = _run_migrate(plain_url)
    second = _run_migrate(plain_url)
    # Then the first run creates the database and the schema, the second changes nothing
    assert first.returncode == 0, first.stdout + first.stderr
    assert second.returncode == 0, second.stdout + second.stderr
    assert _exists(name)
    assert "created database" in first.stdout
    assert "created database" not in second.stdout
    engine = create_engine(url)
    try:
        assert _version(engine) == _head(url)
        tables = set(inspect(engine).get_table_names())
        assert {"payment_events", "customers", "cards", "charges"} <= tables
    finally:
        engine.dispose()


def test_migrated_schema_matches_the_models(fresh_db):
    # Given a database migrated to head
    _, url = fresh_db
    migrate(url)
    engine = create_engine(url)
    try:
        # When Alembic autogenerate compares it with db.models
        diff = _schema_diff(engine)
    finally:
        engine.dispose()
    # Then there is nothing to generate: the migrations and the models agree
    assert diff == [], diff


def test_partial_unique_indexes_exist_and_hold(fresh_db):
    # Given a migrated database
    _, url = fresh_db
    migrate(url)
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            indexes = dict(conn.execute(text(
                "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
            )).all())
        # Then the partial unique indexes of the contract are there, with their predicates
        active = indexes["uq_cards_active_fingerprint"]
        assert "UNIQUE" in active and "(user_id, fingerprint)" in active
        assert "WHERE (removed_at IS NULL)" in active
        default = indexes["uq_cards_one_default"]
        assert "UNIQUE" in default and "(user_id)" in default
        assert "WHERE (is_default AND (removed_at IS NULL))" in default
        # ... and they reject a second active card with one fingerprint, and a second default
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO customers (user_id, stripe_customer_id, email)"
                " VALUES ('u1', 'cus_1', 'a@example.com')"
            ))
            conn.execute(text(
                "INSERT INTO cards (stripe_card_id, user_id, fingerprint, is_default)"
                " VALUES ('card_1', 'u1', 'fp', true)"
            ))
        duplicates = [
            "INSERT INTO cards (stripe_card_id, user_id, fingerprint)"
            " VALUES ('card_2', 'u1', 'fp')",
            "INSERT INTO cards (stripe_card_id, user_id, fingerprint, is_default)"
            " VALUES ('card_3', 'u1', 'other', true)",
        ]
        for statement in duplicates:
            with pytest.raises(IntegrityError), engine.begin() as conn:
                conn.execute(text(statement))
        # ... while a removed card does not count
        with engine.begin() as conn:
            conn.execute(text(
                "UPDATE cards SET removed_at = now(), is_default = false"
                " WHERE stripe_card_id = 'card_1'"
            ))
            conn.execute(text(duplicates[0]))
        # ... and a PaymentIntent is one charge's at most, while charges without one abound
        intent = indexes["uq_charges_payment_intent_id"]
        assert "UNIQUE" in intent and "WHERE (payment_intent_id IS NOT NULL)" in intent
        with engine.begin() as conn:
            for n, intent_id in enumerate(["'pi_1'", "NULL", "NULL"]):
                conn.execute(text(
                    "INSERT INTO payment_events (event_id, type, payload, payload_hash, status,"
                    " recovery_point, progress)"
                    f" VALUES ('e{n}', 'charge_requested', '{{}}', 'h', 'succeeded', 'started',"
                    " '{}')"
                ))
                conn.execute(text(
                    "INSERT INTO charges (event_id, user_id, amount, currency, stripe_card_id,"
                    " status, payment_intent_id)"
                    f" VALUES ('e{n}', 'u1', 100, 'usd', 'card_1', 'succeeded', {intent_id})"
                ))
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(text(
                "UPDATE charges SET payment_intent_id = 'pi_1' WHERE event_id = 'e1'"
            ))
    finally:
        engine.dispose()


def test_downgrade_to_base_and_upgrade_again(fresh_db):
    # Given a database migrated to head
    _, url = fresh_db
    migrate(url)
    config = alembic_config(url)
    engine = create_engine(url)
    try:
        # When it is downgraded to base
        command.downgrade(config, "base")
        # Then no payworker table is left
        left = set(inspect(engine).get_table_names()) - {"alembic_version"}
        assert left == set()
        # When it is upgraded again
        command.upgrade(config, "head")
        # Then it is at head and matches the models again
        assert _version(engine) == _head(url)
        assert _schema_diff(engine) == []
    finally:
        engine.dispose()


def test_0002_adds_the_duties_table_to_a_ledger_in_use_and_removes_it_again(fresh_db):
    # Given a database at 0001 with an event that keeps a sealed card token
    _, url = fresh_db
    create_database_if_missing(url)
    config = alembic_config(url)
    command.upgrade(config, "0001")
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO payment_events (event_id, type, user_id, payload, payload_hash,"
                " status, recovery_point, progress, queue, sealed_token)"
                " VALUES ('e1', 'card_token_received', 'u1', '{}', 'h', 'dead',"
                " 'card_attaching', '{}', 'payments', 'sealed')"
            ))
        # When it is upgraded to 0002
        command.upgrade(config, "0002")
        # Then the duties table is there, empty, keyed by queue and duty, and the event kept
        with engine.begin() as conn:
            assert conn.execute(text("SELECT count(*) FROM payworker_duties")).scalar() == 0
            conn.execute(text(
                "INSERT INTO payworker_duties (queue, name, leader, leader_since,"
                " period_seconds) VALUES ('payments', 'sweep', 'w@h:1', now(), 5)"
            ))
            assert conn.execute(text(
                "SELECT sealed_token FROM payment_events WHERE event_id = 'e1'"
            )).scalar() == "sealed"
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO payworker_duties (queue, name, period_seconds)"
                " VALUES ('payments', 'sweep', 5)"
            ))
        indexes = {i["name"]: i for i in inspect(engine).get_indexes("payment_events")}
        sealed = indexes["ix_payment_events_sealed"]
        assert sealed["column_names"] == ["queue", "created_at"]
        assert "sealed_token IS NOT NULL" in str(sealed["dialect_options"]["postgresql_where"])
        # When it is downgraded to 0001
        command.downgrade(config, "0001")
        # Then the table and the index are gone, and the ledger is untouched
        assert "payworker_duties" not in inspect(engine).get_table_names()
        assert "ix_payment_events_sealed" not in {
            i["name"] for i in inspect(engine).get_indexes("payment_events")
        }
        with engine.connect() as conn:
            assert _version(conn.engine) == "0001"
            assert conn.execute(text("SELECT count(*) FROM payment_events")).scalar() == 1
        # and upgrading again reaches head
        command.upgrade(config, "head")
        assert _version(engine) == _head(url) and _schema_diff(engine) == []
    finally:
        engine.dispose()


def test_0003_adds_the_refusal_counts_and_removes_them_again(fresh_db):
    # Given a database at 0002
    _, url = fresh_db
    create_database_if_missing(url)
    config = alembic_config(url)
    command.upgrade(config, "0002")
    engine = create_engine(url)
    try:
        # When it is upgraded to 0003 and three refusals are counted
        command.upgrade(config, "0003")
        with engine.begin() as conn:
            for reason in ("unsigned", "unsigned", "bad_signature"):
                count_refusal(conn, reason)
        # Then today's counts are there by reason, and nothing else is stored
        with engine.connect() as conn:
            summary = refusal_summary(conn)
            columns = {c["name"] for c in inspect(engine).get_columns("payworker_refusals")}
        assert summary.today == {"unsigned": 2, "bad_signature": 1} == summary.recent
        assert summary.last_at is not None
        assert columns == {"day", "reason", "count", "last_at"}
        # When it is downgraded to 0002, the table is gone; upgrading again reaches head
        command.downgrade(config, "0002")
        assert "payworker_refusals" not in inspect(engine).get_table_names()
        command.upgrade(config, "head")
        assert _version(engine) == _head(url) and _schema_diff(engine) == []
    finally:
        engine.dispose()
