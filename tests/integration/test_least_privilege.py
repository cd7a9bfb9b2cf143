"""Least privilege: `payworker migrate --grant ROLE`, run by the schema's owner, gives a
plain role exactly what the runtime needs. A real worker whose DATABASE_URL uses that role
runs the core flow; the role cannot delete rows, truncate or change the schema."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError

from tests.conftest import PG_ADMIN_URL
from tests.integration.test_operator_cli import PAYWORKER, ROOT

TABLES = ("payment_events", "customers", "cards", "charges", "payworker_duties")


def payworker(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`payworker ARGS` with this DATABASE_URL (the rest of the environment as it is)."""
    env = {**os.environ, "DATABASE_URL": database_url, "PYTHONPATH": str(ROOT)}
    return subprocess.run([PAYWORKER, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.fixture
def runtime_role(database_url: str) -> Iterator[tuple[str, str]]:
    """A plain login role with a random name and password; (name, its DATABASE_URL).
    Everything granted to it is revoked and the role dropped afterwards."""
    name = f"pw_runtime_{uuid.uuid4().hex[:8]}"
    password = secrets.token_urlsafe(18)  # [A-Za-z0-9_-]: safe inside a SQL literal
    admin = create_engine(f"{PG_ADMIN_URL}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'"))
    url = make_url(database_url).set(username=name, password=password)
    try:
        yield name, url.render_as_string(hide_password=False)
    finally:
        owner = create_engine(database_url, isolation_level="AUTOCOMMIT")
        with owner.connect() as conn:
            # its privileges, default privileges included, here and on the database
            conn.execute(text(f"DROP OWNED BY {name}"))
        owner.dispose()
        with admin.connect() as conn:
            conn.execute(text(f"DROP ROLE {name}"))
        admin.dispose()


def privileges(database_url: str, role: str) -> dict[str, set[str]]:
    """The table privileges `role` has, by table."""
    kinds = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return {
                table: {k for k in kinds if conn.execute(
                    text("SELECT has_table_privilege(:r, :t, :k)"),
                    {"r": role, "t": table, "k": k}).scalar()}
                for table in (*TABLES, "alembic_version")
            }
    finally:
        engine.dispose()


def test_migrate_grant_refuses_a_role_that_does_not_exist(database_url):
    done = payworker(database_url, "migrate", "--grant", f"nobody_{uuid.uuid4().hex[:6]}")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "does not exist" in done.stderr and "CREATE ROLE" in done.stderr


def test_a_worker_runs_the_core_flow_as_a_least_privileged_role(
    database_url, runtime_role, start_worker, upstream, wait_for, stripe_fake, ids
):
    role, role_url = runtime_role
    # Given the owner granting the runtime role its privileges, twice (safe to re-run)
    for _ in range(2):
        granted = payworker(database_url, "migrate", "--grant", role)
        assert granted.returncode == 0, granted.stdout + granted.stderr
        assert f"granted {role}" in granted.stdout
    # Then the role may read, add and change rows of payworker's tables, and nothing else
    have = privileges(database_url, role)
    for table in TABLES:
        assert have[table] == {"SELECT", "INSERT", "UPDATE"}, (table, have[table])
    assert have["alembic_version"] == {"SELECT"}

    # When a real worker runs with DATABASE_URL as that role
    worker = start_worker(concurrency=2, DATABASE_URL=role_url)
    try:
        # Then the core flow succeeds: registration, card, charge
        user, reg, tok, chg = ids("user"), ids("reg"), ids("tok"), ids("chg")
        send = _sender(upstream, worker.queue)
        send("user_registered", event_id=reg, user_id=user, email="least@example.com")
        send("card_token_received", event_id=tok, user_id=user,
             token=stripe_fake.create_card_token("4242424242424242"))
        rows = wait_for(reg, tok, timeout=30)
        send("charge_requested", event_id=chg, user_id=user, amount=1234, currency="usd")
        rows.update(wait_for(chg, timeout=30))
        assert {e: r["status"] for e, r in rows.items()} == dict.fromkeys(
            (reg, tok, chg), "succeeded"), rows
        assert "permission denied" not in worker.log()
        # and the worker leads the queue's periodic duties (the sweep) as that role too
        assert "leading the periodic duties" in worker.log()
        # and the operator's reads work as that role too
        shown = payworker(role_url, "events", "show", chg)
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["status"] == "succeeded"
    finally:
        worker.stop()

    # And the role can neither delete nor truncate rows, nor create a table
    engine = create_engine(role_url)
    try:
        for statement in (
            "DELETE FROM payment_events WHERE event_id = :e",
            "TRUNCATE payment_events",
            "CREATE TABLE pw_probe (x int)",
            "DROP TABLE charges",
            "ALTER TABLE payment_events ADD COLUMN pw_probe int",
        ):
            with engine.connect() as conn, pytest.raises(ProgrammingError) as denied:
                conn.execute(text(statement), {"e": chg})
            _assert_denied(denied.value, statement)
    finally:
        engine.dispose()
    assert set(wait_for(chg)) == {chg}  # the row is still there


def _assert_denied(error: Any, statement: str) -> None:
    message = str(error.orig)
    assert "permission denied" in message or "must be owner" in message, (statement, message)


def _sender(upstream: Any, queue: str) -> Any:
    def send(message_type: str, **kwargs: Any) -> None:
        upstream.send_task(f"payments.{message_type}", kwargs=kwargs, queue=queue)
    return send
