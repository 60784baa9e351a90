"""billing resources: invoices, their lines and complete-line markers, the invoice each invoice item
joined (learnt from lines), billing meters, alerts and their triggers, invoice rendering templates,
meter error reports

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 16:24:31.680758
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "billing_alert_triggers",
        sa.Column("last_event_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("last_event_created", sa.BigInteger(), nullable=False),
        sa.Column("version_precedence", sa.Integer(), nullable=False),
        sa.Column("version_tiebreak", sa.BigInteger(), nullable=False),
        sa.Column("event_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("alert", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("customer", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("created", sa.BigInteger(), nullable=True),
        sa.Column("livemode", sa.Boolean(), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_billing_alert_triggers")),
    )
    with op.batch_alter_table("billing_alert_triggers", schema=None) as batch_op:
        batch_op.create_index("ix_billing_alert_triggers_alert_created", ["alert", "created"], unique=False)
        batch_op.create_index(batch_op.f("ix_billing_alert_triggers_created"), ["created"], unique=False)
        batch_op.create_index(batch_op.f("ix_billing_alert_triggers_customer"), ["customer"], unique=False)

    op.create_table(
        "billing_alerts",
        sa.Column("last_event_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("last_event_created", sa.BigInteger(), nullable=False),
        sa.Column("version_precedence", sa.Integer(), nullable=False),
        sa.Column("version_tiebreak", sa.BigInteger(), nullable=False),
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("alert_type", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("title", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("livemode", sa.Boolean(), nullable=True),
        sa.Column("meter", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("gte", sa.BigInteger(), nullable=True),
        sa.Column("recurrence", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("customer", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("filters", sa.JSON(), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_alerts")),
    )
    with op.batch_alter_table("billing_alerts", schema=None) as batch_op:
        batch_op.create_index("ix_billing_alerts_alert_type_id", ["alert_type", "id"], unique=False)
        batch_op.create_index("ix_billing_alerts_customer_id", ["customer", "id"], unique=False)
        batch_op.create_index("ix_billing_alerts_meter_id", ["meter", "id"], unique=False)
        batch_op.create_index("ix_billing_alerts_status_id", ["status", "id"], unique=False)

    op.create_table(
        "billing_meter_error_reports",
        sa.Column("last_event_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("last_event_created", sa.BigInteger(), nullable=False),
        sa.Column("version_precedence", sa.Integer(), nullable=False),
        sa.Column("version_tiebreak", sa.BigInteger(), nullable=False),
        sa.Column("event_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("type", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("meter", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("created", sa.BigInteger(), nullable=False),
        sa.Column("livemode", sa.Boolean(), nullable=True),
        sa.Column("context", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("reason", sa.JSON(), nullable=True),
        sa.Column("developer_message_summary", sa.Text(), nullable=True),
        sa.Column("validation_start", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("validation_end", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("error_count", sa.BigInteger(), nullable=True),
        sa.Column("error_types", sa.JSON(), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_billing_meter_error_reports")),
    )
    with op.batch_alter_table("billing_meter_error_reports", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_billing_meter_error_reports_created"), ["created"], unique=False)
        batch_op.create_index(batch_op.f("ix_billing_meter_error_reports_meter"), ["meter"], unique=False)
        batch_op.create_index(batch_op.f("ix_billing_meter_error_reports_type"), ["type"], unique=False)

    op.create_table(
        "billing_meters",
        sa.Column("last_event_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("last_event_created", sa.BigInteger(), nullable=False),
        sa.Column("version_precedence", sa.Integer(), nullable=False),
        sa.Column("version_tiebreak", sa.BigInteger(), nullable=False),
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("display_name", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("event_name", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("event_time_window", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("aggregation_formula", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("customer_mapping", sa.JSON(), nullable=True),
        sa.Column("value_settings", sa.JSON(), nullable=True),
        sa.Column("status_transitions", sa.JSON(), nullable=True),
        sa.Column("deactivated_at", sa.BigInteger(), nullable=True),
        sa.Column("livemode", sa.Boolean(), nullable=True),
        sa.Column("created", sa.BigInteger(), nullable=True),
        sa.Column("updated", sa.BigInteger(), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_meters")),
    )
    with op.batch_alter_table("billing_meters", schema=None) as batch_op:
        batch_op.create_index("ix_billing_meters_created_id", ["created", "id"], unique=False)
        batch_op.create_index(batch_op.f("ix_billing_meters_event_name"), ["event_name"], unique=False)
        batch_op.create_index(
            "ix_billing_meters_status_created_id", ["status", "created", "id"], unique=False
        )

    op.create_table(
        "invoice_item_invoices",
        sa.Column("last_event_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("last_event_created", sa.BigInteger(), nullable=False),
        sa.Column("version_precedence", sa.Integer(), nullable=False),
        sa.Column("version_tiebreak", sa.BigInteger(), nullable=False),
        sa.Column("invoice_item", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("invoice", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.PrimaryKeyConstraint("invoice_item", name=op.f("pk_invoice_item_invoices")),
    )
    with op.batch_alter_table("invoice_item_invoices", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_invoice_item_invoices_invoice"), ["invoice"], unique=False)

    op.create_table(
        "invoice_line_items",
        sa.Column("last_event_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("last_event_created", sa.BigInteger(), nullable=False),
        sa.Column("version_precedence", sa.Integer(), nullable=False),
        sa.Column("version_tiebreak", sa.BigInteger(), nullable=False),
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("invoice", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=True),
        sa.Column("currency", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("discount_amounts", sa.JSON(), nullable=True),
        sa.Column("discountable", sa.Boolean(), nullable=True),
        sa.Column("discounts", sa.JSON(), nullable=True),
        sa.Column("livemode", sa.Boolean(), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("parent_type", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("invoice_item", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("subscription_item", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("subscription", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("proration", sa.Boolean(), nullable=True),
        sa.Column("proration_details", sa.JSON(), nullable=True),
        sa.Column("period_start", sa.BigInteger(), nullable=True),
        sa.Column("period_end", sa.BigInteger(), nullable=True),
        sa.Column("pretax_credit_amounts", sa.JSON(), nullable=True),
        sa.Column("pricing_type", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("price", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("product", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("unit_amount_decimal", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("quantity", sa.BigInteger(), nullable=True),
        sa.Column("quantity_decimal", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("subtotal", sa.BigInteger(), nullable=True),
        sa.Column("taxes", sa.JSON(), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invoice_line_items")),
    )
    with op.batch_alter_table("invoice_line_items", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_invoice_line_items_invoice_item"), ["invoice_item"], unique=False
        )
        batch_op.create_index(
            "ix_invoice_line_items_invoice_position_id", ["invoice", "position", "id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_invoice_line_items_subscription"), ["subscription"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_invoice_line_items_subscription_item"), ["subscription_item"], unique=False
        )

    op.create_table(
        "invoice_line_sets",
        sa.Column("last_event_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("last_event_created", sa.BigInteger(), nullable=False),
        sa.Column("version_precedence", sa.Integer(), nullable=False),
        sa.Column("version_tiebreak", sa.BigInteger(), nullable=False),
        sa.Column("invoice", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.PrimaryKeyConstraint("invoice", name=op.f("pk_invoice_line_sets")),
    )
    op.create_table(
        "invoice_rendering_templates",
        sa.Column("last_event_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("last_event_created", sa.BigInteger(), nullable=False),
        sa.Column("version_precedence", sa.Integer(), nullable=False),
        sa.Column("version_tiebreak", sa.BigInteger(), nullable=False),
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("nickname", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("version", sa.BigInteger(), nullable=True),
        sa.Column("livemode", sa.Boolean(), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("created", sa.BigInteger(), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invoice_rendering_templates")),
    )
    with op.batch_alter_table("invoice_rendering_templates", schema=None) as batch_op:
        batch_op.create_index("ix_invoice_rendering_templates_created_id", ["created", "id"], unique=False)
        batch_op.create_index(
            "ix_invoice_rendering_templates_status_created_id", ["status", "created", "id"], unique=False
        )

    op.create_table(
        "invoices",
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("deleted_by_event_id", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("deleted_by_event_created", sa.BigInteger(), nullable=True),
        sa.Column("last_event_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("last_event_created", sa.BigInteger(), nullable=False),
        sa.Column("version_precedence", sa.Integer(), nullable=False),
        sa.Column("version_tiebreak", sa.BigInteger(), nullable=False),
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("customer", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("customer_account", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("customer_email", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("customer_name", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("status_transitions", sa.JSON(), nullable=True),
        sa.Column("finalized_at", sa.BigInteger(), nullable=True),
        sa.Column("paid_at", sa.BigInteger(), nullable=True),
        sa.Column("marked_uncollectible_at", sa.BigInteger(), nullable=True),
        sa.Column("voided_at", sa.BigInteger(), nullable=True),
        sa.Column("amount_due", sa.BigInteger(), nullable=True),
        sa.Column("amount_paid", sa.BigInteger(), nullable=True),
        sa.Column("amount_paid_off_stripe", sa.BigInteger(), nullable=True),
        sa.Column("amount_remaining", sa.BigInteger(), nullable=True),
        sa.Column("amount_overpaid", sa.BigInteger(), nullable=True),
        sa.Column("amount_shipping", sa.BigInteger(), nullable=True),
        sa.Column("subtotal", sa.BigInteger(), nullable=True),
        sa.Column("subtotal_excluding_tax", sa.BigInteger(), nullable=True),
        sa.Column("total", sa.BigInteger(), nullable=True),
        sa.Column("total_excluding_tax", sa.BigInteger(), nullable=True),
        sa.Column("starting_balance", sa.BigInteger(), nullable=True),
        sa.Column("ending_balance", sa.BigInteger(), nullable=True),
        sa.Column("currency", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("period_start", sa.BigInteger(), nullable=True),
        sa.Column("period_end", sa.BigInteger(), nullable=True),
        sa.Column("parent_type", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("subscription", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("quote", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("number", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("billing_reason", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("collection_method", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("due_date", sa.BigInteger(), nullable=True),
        sa.Column("livemode", sa.Boolean(), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("created", sa.BigInteger(), nullable=True),
        sa.Column("test_clock", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("lines_incomplete", sa.Boolean(), nullable=True),
        sa.Column("payload", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invoices")),
    )
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.create_index("ix_invoices_created_id", ["created", "id"], unique=False)
        batch_op.create_index("ix_invoices_customer_created_id", ["customer", "created", "id"], unique=False)
        batch_op.create_index("ix_invoices_status_created_id", ["status", "created", "id"], unique=False)
        batch_op.create_index(
            "ix_invoices_subscription_created_id", ["subscription", "created", "id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.drop_index("ix_invoices_subscription_created_id")
        batch_op.drop_index("ix_invoices_status_created_id")
        batch_op.drop_index("ix_invoices_customer_created_id")
        batch_op.drop_index("ix_invoices_created_id")

    op.drop_table("invoices")
    with op.batch_alter_table("invoice_rendering_templates", schema=None) as batch_op:
        batch_op.drop_index("ix_invoice_rendering_templates_status_created_id")
        batch_op.drop_index("ix_invoice_rendering_templates_created_id")

    op.drop_table("invoice_rendering_templates")
    op.drop_table("invoice_line_sets")
    with op.batch_alter_table("invoice_line_items", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_invoice_line_items_subscription_item"))
        batch_op.drop_index(batch_op.f("ix_invoice_line_items_subscription"))
        batch_op.drop_index("ix_invoice_line_items_invoice_position_id")
        batch_op.drop_index(batch_op.f("ix_invoice_line_items_invoice_item"))

    op.drop_table("invoice_line_items")
    with op.batch_alter_table("invoice_item_invoices", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_invoice_item_invoices_invoice"))

    op.drop_table("invoice_item_invoices")
    with op.batch_alter_table("billing_meters", schema=None) as batch_op:
        batch_op.drop_index("ix_billing_meters_status_created_id")
        batch_op.drop_index(batch_op.f("ix_billing_meters_event_name"))
        batch_op.drop_index("ix_billing_meters_created_id")

    op.drop_table("billing_meters")
    with op.batch_alter_table("billing_meter_error_reports", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_billing_meter_error_reports_type"))
        batch_op.drop_index(batch_op.f("ix_billing_meter_error_reports_meter"))
        batch_op.drop_index(batch_op.f("ix_billing_meter_error_reports_created"))

    op.drop_table("billing_meter_error_reports")
    with op.batch_alter_table("billing_alerts", schema=None) as batch_op:
        batch_op.drop_index("ix_billing_alerts_status_id")
        batch_op.drop_index("ix_billing_alerts_meter_id")
        batch_op.drop_index("ix_billing_alerts_customer_id")
        batch_op.drop_index("ix_billing_alerts_alert_type_id")

    op.drop_table("billing_alerts")
    with op.batch_alter_table("billing_alert_triggers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_billing_alert_triggers_customer"))
        batch_op.drop_index(batch_op.f("ix_billing_alert_triggers_created"))
        batch_op.drop_index("ix_billing_alert_triggers_alert_created")

    op.drop_table("billing_alert_triggers")
