"""connect: every mirrored row records the account of the event that wrote it (null: the platform)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 00:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MIRRORED = (
    "invoice_payments",
    "invoice_items",
    "invoices",
    "invoice_line_items",
    "invoice_line_sets",
    "invoice_item_invoices",
    "billing_meters",
    "billing_alerts",
    "billing_alert_triggers",
    "invoice_rendering_templates",
    "billing_meter_error_reports",
)


def upgrade() -> None:
    for table in MIRRORED:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("account", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        # The stored event that wrote each row says its account.
        op.execute(
            f"UPDATE {table} SET account = (SELECT stripe_events.account FROM stripe_events"
            f" WHERE stripe_events.id = {table}.last_event_id)"
            f" WHERE EXISTS (SELECT 1 FROM stripe_events WHERE stripe_events.id = {table}.last_event_id"
            " AND stripe_events.account IS NOT NULL)"
        )


def downgrade() -> None:
    for table in MIRRORED:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("account")
