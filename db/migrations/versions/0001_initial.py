"""Ledger, customers, cards and charges.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "payment_events",
        sa.Column("event_id", sa.String(200), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(200), nullable=True),
        sa.Column("payload", postgresql.JSONB(), nullable=False),
        sa.Column("payload_hash", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("result", postgresql.JSONB(), nullable=True),
        sa.Column("recovery_point", sa.String(32), nullable=False),
        sa.Column("progress", postgresql.JSONB(), nullable=False),
        sa.Column("transient_failures", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("locked_by", sa.String(255), nullable=True),
        sa.Column("locked_until", TS, nullable=True),
        sa.Column("next_attempt_at", TS, nullable=True),
        sa.Column("generation", sa.Integer(), server_default="0", nullable=False),
        sa.Column("queue", sa.String(255), nullable=True),
        sa.Column("sealed_token", sa.Text(), nullable=True),
        sa.Column("redrives", sa.Integer(), server_default="0", nullable=False),
        sa.Column("created_at", TS, server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", TS, server_default=sa.func.now(), nullable=False),
        sa.Column("completed_at", TS, nullable=True),
        sa.CheckConstraint(
            "status IN ('received', 'processing', 'succeeded', 'failed', 'dead')",
            name=op.f("ck_payment_events_status"),
        ),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_payment_events_attempts_non_negative")),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_payment_events")),
    )
    op.create_index("ix_payment_events_status_type", "payment_events", ["status", "type"])
    op.create_index("ix_payment_events_user_id", "payment_events", ["user_id"])
    op.create_index(
        "ix_payment_events_unfinished",
        "payment_events",
        ["created_at"],
        postgresql_where=sa.text("status IN ('received', 'processing')"),
    )

    op.create_index(
        "ix_payment_events_due",
        "payment_events",
        ["queue", "next_attempt_at"],
        postgresql_where=sa.text("status IN ('received', 'processing')"),
    )

    op.create_table(
        "customers",
        sa.Column("user_id", sa.String(200), nullable=False),
        sa.Column("stripe_customer_id", sa.String(255), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("name", sa.String(500), nullable=True),
        sa.Column("event_id", sa.String(200), nullable=True),
        sa.Column("created_at", TS, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_customers")),
        sa.UniqueConstraint("stripe_customer_id", name=op.f("uq_customers_stripe_customer_id")),
    )

    op.create_table(
        "cards",
        sa.Column("stripe_card_id", sa.String(255), nullable=False),
        sa.Column("user_id", sa.String(200), nullable=False),
        sa.Column("fingerprint", sa.String(255), nullable=False),
        sa.Column("brand", sa.String(64), nullable=True),
        sa.Column("last4", sa.String(4), nullable=True),
        sa.Column("exp_month", sa.Integer(), nullable=True),
        sa.Column("exp_year", sa.Integer(), nullable=True),
        sa.Column("is_default", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("event_id", sa.String(200), nullable=True),
        sa.Column("created_at", TS, server_default=sa.func.now(), nullable=False),
        sa.Column("removed_at", TS, nullable=True),
        sa.CheckConstraint(
            "NOT (is_default AND removed_at IS NOT NULL)",
            name=op.f("ck_cards_removed_not_default"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["customers.user_id"], name=op.f("fk_cards_user_id_customers")
        ),
        sa.PrimaryKeyConstraint("stripe_card_id", name=op.f("pk_cards")),
    )
    op.create_index("ix_cards_user_id", "cards", ["user_id"])
    op.create_index(
        "uq_cards_active_fingerprint",
        "cards",
        ["user_id", "fingerprint"],
        unique=True,
        postgresql_where=sa.text("removed_at IS NULL"),
    )
    op.create_index(
        "uq_cards_one_default",
        "cards",
        ["user_id"],
        unique=True,
        postgresql_where=sa.text("is_default AND removed_at IS NULL"),
    )

    op.create_table(
        "charges",
        sa.Column("event_id", sa.String(200), nullable=False),
        sa.Column("user_id", sa.String(200), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("stripe_card_id", sa.String(255), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("stripe_charge_id", sa.String(255), nullable=True),
        sa.Column("failure_code", sa.String(64), nullable=True),
        sa.Column("decline_code", sa.String(64), nullable=True),
        sa.Column("failure_message", sa.Text(), nullable=True),
        sa.Column("created_at", TS, server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", TS, server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint(
            "status IN ('pending', 'succeeded', 'failed')", name=op.f("ck_charges_status")
        ),
        sa.CheckConstraint("amount > 0", name=op.f("ck_charges_amount_positive")),
        sa.CheckConstraint("currency = lower(currency)", name=op.f("ck_charges_currency_lower")),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["payment_events.event_id"],
            name=op.f("fk_charges_event_id_payment_events"),
        ),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_charges")),
        sa.UniqueConstraint("stripe_charge_id", name=op.f("uq_charges_stripe_charge_id")),
    )
    op.create_index("ix_charges_user_id", "charges", ["user_id"])


def downgrade() -> None:
    op.drop_table("charges")
    op.drop_table("cards")
    op.drop_table("customers")
    op.drop_table("payment_events")
