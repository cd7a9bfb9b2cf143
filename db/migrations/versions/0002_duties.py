"""Periodic duties led by one worker per queue, and an index for the token expiry.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "payworker_duties",
        sa.Column("queue", sa.String(255), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("leader", sa.String(255), nullable=True),
        sa.Column("leader_since", TS, nullable=True),
        sa.Column("period_seconds", sa.Float(), nullable=False),
        sa.Column("last_run_at", TS, nullable=True),
        sa.Column("last_result", postgresql.JSONB(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_error_at", TS, nullable=True),
        sa.Column("updated_at", TS, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("queue", "name", name=op.f("pk_payworker_duties")),
    )
    op.create_index(
        "ix_payment_events_sealed",
        "payment_events",
        ["queue", "created_at"],
        postgresql_where=sa.text("sealed_token IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_payment_events_sealed", table_name="payment_events")
    op.drop_table("payworker_duties")
