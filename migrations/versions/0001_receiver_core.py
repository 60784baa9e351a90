"""receiver core: events, invoice payments, invoice items

Revision ID: 0001
Revises:
Create Date: 2026-11-23 16:01:31.077418
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Predicate of the partial indexes on pending invoice items (not yet on an invoice); see app/db/models.py.
PENDING = "invoice IS NULL"


def upgrade() -> None:
    op.create_table(
        "invoice_items",
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("deleted_by_event_id", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("deleted_by_event_created", sa.BigInteger(), nullable=True),
        sa.Column("last_event_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("last_event_created", sa.BigInteger(), nullable=False),
        sa.Column("version_precedence", sa.Integer(), nullable=False),
        sa.Column("version_tiebreak", sa.BigInteger(), nullable=False),
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=True),
        sa.Column("currency", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("customer", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("customer_account", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("date", sa.BigInteger(), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("discountable", sa.Boolean(), nullable=True),
        sa.Column("discounts", sa.JSON(), nullable=True),
        sa.Column("invoice", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("livemode", sa.Boolean(), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("net_amount", sa.BigInteger(), nullable=True),
        sa.Column("parent_type", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("subscription", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("subscription_item", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("period_start", sa.BigInteger(), nullable=True),
        sa.Column("period_end", sa.BigInteger(), nullable=True),
        sa.Column("pricing_type", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("price", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("product", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("unit_amount_decimal", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("proration", sa.Boolean(), nullable=True),
        sa.Column("proration_details", sa.JSON(), nullable=True),
        sa.Column("quantity", sa.BigInteger(), nullable=True),
        sa.Column("quantity_decimal", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("tax_rates", sa.JSON(), nullable=True),
        sa.Column("test_clock", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("payload", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invoice_items")),
    )
    with op.batch_alter_table("invoice_items", schema=None) as batch_op:
        batch_op.create_index("ix_invoice_items_customer_date_id", ["customer", "date", "id"], unique=False)
        batch_op.create_index("ix_invoice_items_date_id", ["date", "id"], unique=False)
        batch_op.create_index("ix_invoice_items_invoice_date_id", ["invoice", "date", "id"], unique=False)
        batch_op.create_index(
            "ix_invoice_items_pending_customer_date_id",
            ["customer", "date", "id"],
            unique=False,
            sqlite_where=sa.text(PENDING),
            postgresql_where=sa.text(PENDING),
        )
        batch_op.create_index(
            "ix_invoice_items_pending_date_id",
            ["date", "id"],
            unique=False,
            sqlite_where=sa.text(PENDING),
            postgresql_where=sa.text(PENDING),
        )
        batch_op.create_index(batch_op.f("ix_invoice_items_subscription"), ["subscription"], unique=False)

    op.create_table(
        "invoice_payments",
        sa.Column("last_event_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("last_event_created", sa.BigInteger(), nullable=False),
        sa.Column("version_precedence", sa.Integer(), nullable=False),
        sa.Column("version_tiebreak", sa.BigInteger(), nullable=False),
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("amount_paid", sa.BigInteger(), nullable=True),
        sa.Column("amount_requested", sa.BigInteger(), nullable=True),
        sa.Column("created", sa.BigInteger(), nullable=True),
        sa.Column("currency", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("invoice", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("is_default", sa.Boolean(), nullable=True),
        sa.Column("livemode", sa.Boolean(), nullable=True),
        sa.Column("payment_type", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("payment_id", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("paid_at", sa.BigInteger(), nullable=True),
        sa.Column("canceled_at", sa.BigInteger(), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invoice_payments")),
    )
    with op.batch_alter_table("invoice_payments", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_invoice_payments_canceled_at"), ["canceled_at"], unique=False)
        batch_op.create_index("ix_invoice_payments_created_id", ["created", "id"], unique=False)
        batch_op.create_index(
            "ix_invoice_payments_invoice_created_id", ["invoice", "created", "id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_invoice_payments_paid_at"), ["paid_at"], unique=False)
        batch_op.create_index(
            "ix_invoice_payments_payment_type_created_id", ["payment_type", "created", "id"], unique=False
        )
        batch_op.create_index(
            "ix_invoice_payments_payment_id_type_created_id",
            ["payment_id", "payment_type", "created", "id"],
            unique=False,
        )
        batch_op.create_index(
            "ix_invoice_payments_status_created_id", ["status", "created", "id"], unique=False
        )

    op.create_table(
        "stripe_events",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("type", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("created", sa.BigInteger(), nullable=False),
        sa.Column("api_version", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("livemode", sa.Boolean(), nullable=False),
        sa.Column("account", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("thin", sa.Boolean(), nullable=False),
        sa.Column("object_id", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stripe_events")),
    )
    with op.batch_alter_table("stripe_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_stripe_events_created"), ["created"], unique=False)
        batch_op.create_index(batch_op.f("ix_stripe_events_object_id"), ["object_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_stripe_events_outcome"), ["outcome"], unique=False)
        batch_op.create_index(batch_op.f("ix_stripe_events_type"), ["type"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("stripe_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_stripe_events_type"))
        batch_op.drop_index(batch_op.f("ix_stripe_events_outcome"))
        batch_op.drop_index(batch_op.f("ix_stripe_events_object_id"))
        batch_op.drop_index(batch_op.f("ix_stripe_events_created"))

    op.drop_table("stripe_events")
    with op.batch_alter_table("invoice_payments", schema=None) as batch_op:
        batch_op.drop_index("ix_invoice_payments_status_created_id")
        batch_op.drop_index("ix_invoice_payments_payment_id_type_created_id")
        batch_op.drop_index("ix_invoice_payments_payment_type_created_id")
        batch_op.drop_index(batch_op.f("ix_invoice_payments_paid_at"))
        batch_op.drop_index("ix_invoice_payments_invoice_created_id")
        batch_op.drop_index("ix_invoice_payments_created_id")
        batch_op.drop_index(batch_op.f("ix_invoice_payments_canceled_at"))

    op.drop_table("invoice_payments")
    with op.batch_alter_table("invoice_items", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_invoice_items_subscription"))
        batch_op.drop_index(
            "ix_invoice_items_pending_date_id",
            sqlite_where=sa.text(PENDING),
            postgresql_where=sa.text(PENDING),
        )
        batch_op.drop_index(
            "ix_invoice_items_pending_customer_date_id",
            sqlite_where=sa.text(PENDING),
            postgresql_where=sa.text(PENDING),
        )
        batch_op.drop_index("ix_invoice_items_invoice_date_id")
        batch_op.drop_index("ix_invoice_items_date_id")
        batch_op.drop_index("ix_invoice_items_customer_date_id")

    op.drop_table("invoice_items")
