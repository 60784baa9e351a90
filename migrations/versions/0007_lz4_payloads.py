"""lz4 for stored bodies on PostgreSQL: payloads and dead letters' bodies are compressed with lz4
instead of pglz (PostgreSQL 14 and later; a no-op on SQLite and older servers)

pglz compression of event payloads (each invoice body is stored with its event and with its row)
was about a fifth of PostgreSQL's CPU under webhook load; lz4 compresses several times faster.
Values already stored keep their compression until rewritten; both kinds read the same.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 01:50:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The columns that hold whole Stripe bodies (large, compressible text or bytes).
COLUMNS = (
    ("stripe_events", "payload"),
    ("dead_letters", "body"),
    ("invoice_payments", "payload"),
    ("invoice_items", "payload"),
    ("invoices", "payload"),
    ("invoice_line_items", "payload"),
    ("billing_meters", "payload"),
    ("billing_alerts", "payload"),
    ("billing_alert_triggers", "payload"),
    ("invoice_rendering_templates", "payload"),
    ("billing_meter_error_reports", "payload"),
)


def _set_compression(method: str) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql" or bind.dialect.server_version_info < (14,):
        return
    for table, column in COLUMNS:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET COMPRESSION {method}")


def upgrade() -> None:
    _set_compression("lz4")


def downgrade() -> None:
    _set_compression("pglz")
