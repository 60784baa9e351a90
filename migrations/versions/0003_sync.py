"""sync: event sources, backfill checkpoints and state; fetched snapshots lose same-second ties

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06 21:27:05.125324
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VERSIONED_BY_EVENTS = (
    "invoice_payments",
    "invoice_items",
    "invoices",
    "invoice_line_items",
    "invoice_line_sets",
    "invoice_item_invoices",
    "billing_meters",
    "billing_alerts",
    "billing_alert_triggers",
    "billing_meter_error_reports",
)


def upgrade() -> None:
    op.create_table(
        "sync_state",
        sa.Column("account", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("resource", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("started_at", sa.BigInteger(), nullable=True),
        sa.Column("finished_at", sa.BigInteger(), nullable=True),
        sa.Column("objects", sa.BigInteger(), nullable=False),
        sa.Column("watermark", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("account", "resource", name=op.f("pk_sync_state")),
    )
    op.create_table(
        "sync_windows",
        sa.Column("account", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("resource", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("span", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("created_gte", sa.BigInteger(), nullable=True),
        sa.Column("created_lt", sa.BigInteger(), nullable=True),
        sa.Column("cursor", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("done", sa.Boolean(), nullable=False),
        sa.Column("objects", sa.BigInteger(), nullable=False),
        sa.Column("pages", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("account", "resource", "span", name=op.f("pk_sync_windows")),
    )

    with op.batch_alter_table("stripe_events", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("source", sa.Text(), server_default=sa.text("'webhook'"), nullable=False)
        )

    # Fetched snapshots (type snapshot.*) lose a same-second tie to an event: every version's tiebreak
    # now holds the resource's own order times two, plus one for an event. Rows written so far were
    # all written by events, except templates, which only ever came from list files.
    for table in VERSIONED_BY_EVENTS:
        op.execute(f"UPDATE {table} SET version_tiebreak = version_tiebreak * 2 + 1")


def downgrade() -> None:
    for table in VERSIONED_BY_EVENTS:
        op.execute(f"UPDATE {table} SET version_tiebreak = version_tiebreak / 2")
    # Before: a template's version was (0, its version, 0, 'backfill').
    op.execute("UPDATE invoice_rendering_templates SET version_tiebreak = 0")

    with op.batch_alter_table("stripe_events", schema=None) as batch_op:
        batch_op.drop_column("source")

    op.drop_table("sync_windows")
    op.drop_table("sync_state")
