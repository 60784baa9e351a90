"""api versions: how an invoice was paid (invoices.charge, invoices.payment_intent); invoice item links
per (item, invoice) with present, the item's own invoice among them, taken off by newer line lists

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07 00:12:11.993365
"""

import json
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VERSION = ("version_precedence", "last_event_created", "version_tiebreak", "last_event_id")


def _version(table: str) -> str:
    return f"({', '.join(f'{table}.{name}' for name in VERSION)})"


# The incoming row's version above the stored one's (a row-value comparison, on both databases).
NEWER = f"{_version('excluded')} > {_version('invoice_item_invoices')}"
COPY_BATCH = 1000


def _links_table(name: str, *, per_invoice: bool) -> sa.Table:
    columns = [
        sa.Column("last_event_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("last_event_created", sa.BigInteger(), nullable=False),
        sa.Column("version_precedence", sa.Integer(), nullable=False),
        sa.Column("version_tiebreak", sa.BigInteger(), nullable=False),
        sa.Column("invoice_item", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("invoice", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    ]
    if per_invoice:
        columns.append(sa.Column("present", sa.Boolean(), nullable=False))
        key = sa.PrimaryKeyConstraint("invoice_item", "invoice", name="pk_invoice_item_invoices")
    else:
        key = sa.PrimaryKeyConstraint("invoice_item", name="pk_invoice_item_invoices")
    return op.create_table(name, *columns, key)


def _ref_id(value: object) -> str | None:
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) else None


def upgrade() -> None:
    bind = op.get_bind()
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("charge", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch_op.add_column(sa.Column("payment_intent", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
    # Invoices rendered before 2025-03-31.basil name their payment at the top level: read it from the
    # stored payloads that have it (in Python: a payload is any JSON a webhook brought).
    invoices = sa.table(
        "invoices", sa.column("id"), sa.column("payload"), sa.column("charge"), sa.column("payment_intent")
    )
    named = sa.or_(invoices.c.payload.like('%"charge"%'), invoices.c.payload.like('%"payment_intent"%'))
    found = bind.execute(sa.select(invoices.c.id, invoices.c.payload).where(named)).all()
    for start in range(0, len(found), COPY_BATCH):
        updates = []
        for invoice_id, payload in found[start : start + COPY_BATCH]:
            try:
                obj = json.loads(payload)
            except ValueError:
                continue
            if isinstance(obj, dict) and ("charge" in obj or "payment_intent" in obj):
                updates.append(
                    {
                        "key": invoice_id,
                        "charge": _ref_id(obj.get("charge")),
                        "intent": _ref_id(obj.get("payment_intent")),
                    }
                )
        if updates:
            bind.execute(
                invoices.update()
                .where(invoices.c.id == sa.bindparam("key"))
                .values(charge=sa.bindparam("charge"), payment_intent=sa.bindparam("intent")),
                updates,
            )

    # Links: one row per (item, invoice) instead of one per item, with `present`.
    op.execute("CREATE TABLE invoice_item_invoices_before AS SELECT * FROM invoice_item_invoices")
    with op.batch_alter_table("invoice_item_invoices", schema=None) as batch_op:
        batch_op.drop_index("ix_invoice_item_invoices_invoice")
    op.drop_table("invoice_item_invoices")
    _links_table("invoice_item_invoices", per_invoice=True)
    with op.batch_alter_table("invoice_item_invoices", schema=None) as batch_op:
        batch_op.create_index("ix_invoice_item_invoices_invoice", ["invoice"], unique=False)
        batch_op.create_index(
            "ix_invoice_item_invoices_absent",
            ["invoice_item"],
            unique=False,
            sqlite_where=sa.text("NOT present"),
            postgresql_where=sa.text("NOT present"),
        )
    columns = f"invoice_item, invoice, present, {', '.join(VERSION)}"
    op.execute(
        f"INSERT INTO invoice_item_invoices ({columns})"
        f" SELECT invoice_item, invoice, TRUE, {', '.join(VERSION)} FROM invoice_item_invoices_before"
    )
    op.execute("DROP TABLE invoice_item_invoices_before")
    # An item's own snapshot that names its invoice is evidence of its own.
    op.execute(
        f"INSERT INTO invoice_item_invoices ({columns})"
        f" SELECT id, invoice, TRUE, {', '.join(VERSION)} FROM invoice_items"
        " WHERE invoice IS NOT NULL AND NOT deleted AND version_precedence >= 0"
        " ON CONFLICT (invoice_item, invoice) DO UPDATE SET"
        f" {', '.join(f'{name} = excluded.{name}' for name in VERSION)}"
        f" WHERE {NEWER}"
    )
    # What a newer complete line list of the invoice no longer names is off it.
    op.execute(
        "UPDATE invoice_item_invoices SET present = FALSE,"
        f" {', '.join(f'{name} = s.{name}' for name in VERSION)}"
        " FROM invoice_line_sets AS s WHERE s.invoice = invoice_item_invoices.invoice"
        f" AND {_version('invoice_item_invoices')} < {_version('s')}"
    )


def downgrade() -> None:
    # Back to one row per item: the invoice of its newest present link.
    op.execute(
        "CREATE TABLE invoice_item_invoices_after AS SELECT * FROM invoice_item_invoices WHERE present"
    )
    with op.batch_alter_table("invoice_item_invoices", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_invoice_item_invoices_absent",
            sqlite_where=sa.text("NOT present"),
            postgresql_where=sa.text("NOT present"),
        )
        batch_op.drop_index("ix_invoice_item_invoices_invoice")
    op.drop_table("invoice_item_invoices")
    _links_table("invoice_item_invoices", per_invoice=False)
    with op.batch_alter_table("invoice_item_invoices", schema=None) as batch_op:
        batch_op.create_index("ix_invoice_item_invoices_invoice", ["invoice"], unique=False)
    op.execute(
        f"INSERT INTO invoice_item_invoices (invoice_item, invoice, {', '.join(VERSION)})"
        f" SELECT invoice_item, invoice, {', '.join(VERSION)} FROM invoice_item_invoices_after AS a"
        " WHERE NOT EXISTS (SELECT 1 FROM invoice_item_invoices_after AS b"
        f" WHERE b.invoice_item = a.invoice_item AND {_version('b')} > {_version('a')})"
    )
    op.execute("DROP TABLE invoice_item_invoices_after")
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.drop_column("payment_intent")
        batch_op.drop_column("charge")
