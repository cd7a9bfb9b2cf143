"""The modern Stripe path: PaymentMethod cards, PaymentIntent charges awaiting their
customer (action_required), and refunds.

Only additions: every earlier column, status and index keeps its meaning.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)
EVENT_STATUSES = ("received", "processing", "succeeded", "failed", "dead")
CHARGE_STATUSES = ("pending", "succeeded", "failed")
UNFINISHED = "status IN ('received', 'processing')"
UNFINISHED_NOW = "status IN ('received', 'processing', 'action_required')"


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _status_check(table: str, values: Sequence[str]) -> None:
    op.drop_constraint(op.f(f"ck_{table}_status"), table, type_="check")
    op.create_check_constraint(op.f(f"ck_{table}_status"), table, _in("status", values))


def _unfinished_indexes(where: str) -> None:
    """The ledger's partial indexes of unfinished events (the sweep's question)."""
    op.drop_index("ix_payment_events_unfinished", table_name="payment_events")
    op.drop_index("ix_payment_events_due", table_name="payment_events")
    op.create_index(
        "ix_payment_events_unfinished",
        "payment_events",
        ["created_at"],
        postgresql_where=sa.text(where),
    )
    op.create_index(
        "ix_payment_events_due",
        "payment_events",
        ["queue", "next_attempt_at"],
        postgresql_where=sa.text(where),
    )


def upgrade() -> None:
    _status_check("payment_events", (*EVENT_STATUSES, "action_required"))
    _unfinished_indexes(UNFINISHED_NOW)

    op.add_column(
        "cards", sa.Column("kind", sa.String(16), server_default="source", nullable=False)
    )
    op.create_check_constraint(
        op.f("ck_cards_kind"), "cards", "kind IN ('source', 'payment_method')"
    )

    _status_check("charges", (*CHARGE_STATUSES, "requires_action", "canceled"))
    op.add_column("charges", sa.Column("payment_intent_id", sa.String(255), nullable=True))
    # Unique where set: Charges API rows and pending rows hold none (no index entry).
    op.create_index(
        "uq_charges_payment_intent_id",
        "charges",
        ["payment_intent_id"],
        unique=True,
        postgresql_where=sa.text("payment_intent_id IS NOT NULL"),
    )
    op.add_column(
        "charges",
        sa.Column("amount_refunded", sa.BigInteger(), server_default="0", nullable=False),
    )
    op.create_check_constraint(
        op.f("ck_charges_refunded"),
        "charges",
        "amount_refunded >= 0 AND amount_refunded <= amount",
    )

    op.create_table(
        "refunds",
        sa.Column("event_id", sa.String(200), nullable=False),
        sa.Column("user_id", sa.String(200), nullable=False),
        sa.Column("charge_event_id", sa.String(200), nullable=False),
        sa.Column("stripe_refund_id", sa.String(255), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("reason", sa.String(32), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.Column("created_at", TS, server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", TS, server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint(
            "status IN ('pending', 'succeeded', 'failed', 'canceled')",
            name=op.f("ck_refunds_status"),
        ),
        sa.CheckConstraint("amount > 0", name=op.f("ck_refunds_amount_positive")),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["payment_events.event_id"],
            name=op.f("fk_refunds_event_id_payment_events"),
        ),
        sa.ForeignKeyConstraint(
            ["charge_event_id"],
            ["charges.event_id"],
            name=op.f("fk_refunds_charge_event_id_charges"),
        ),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_refunds")),
        sa.UniqueConstraint("stripe_refund_id", name=op.f("uq_refunds_stripe_refund_id")),
    )
    op.create_index("ix_refunds_charge_event_id", "refunds", ["charge_event_id"])
    op.create_index("ix_refunds_user_id", "refunds", ["user_id"])


def downgrade() -> None:
    """Back to 0003. Refuses while rows use what 0004 added (an action_required event, a
    PaymentMethod card, a charge of the new statuses): those would break 0003's checks."""
    op.drop_table("refunds")
    op.drop_constraint(op.f("ck_charges_refunded"), "charges", type_="check")
    op.drop_column("charges", "amount_refunded")
    op.drop_index("uq_charges_payment_intent_id", table_name="charges")
    op.drop_column("charges", "payment_intent_id")
    _status_check("charges", CHARGE_STATUSES)
    op.drop_constraint(op.f("ck_cards_kind"), "cards", type_="check")
    op.drop_column("cards", "kind")
    _unfinished_indexes(UNFINISHED)
    _status_check("payment_events", EVENT_STATUSES)
