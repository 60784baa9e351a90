"""The README's "SQL schema" section is a public interface: it names every column and index, and its
example queries run as written on SQLite and PostgreSQL."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import Engine, inspect, text

from tests.support import ingest_batch, item, item_created, item_deleted, payment, payment_event

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
SCHEMA_SECTION = README.split("## SQL schema", 1)[1]
EXAMPLES = re.findall(r"```sql\n(.*?)```", SCHEMA_SECTION, flags=re.S)
JAN_2026, FEB_2026 = 1_767_225_600, 1_769_904_000
DOCUMENTED_TABLES = (
    "stripe_events",
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
    "sync_windows",
    "sync_state",
)


@pytest.mark.parametrize("table", DOCUMENTED_TABLES)
def test_every_column_and_index_is_documented(engine: Engine, table: str) -> None:
    inspector = inspect(engine)
    section = SCHEMA_SECTION.split(f"### `{table}`", 1)[1].split("\n### ", 1)[0]
    for column in inspector.get_columns(table):
        assert f"`{column['name']}`" in section, f"{table}.{column['name']} is not documented"
    for index in inspector.get_indexes(table):
        columns = ", ".join(str(name) for name in index["column_names"])
        assert f"`{index['name']} ({columns})" in section, f"index {index['name']} is not documented"


def test_example_queries_run_as_written(engine: Engine) -> None:
    assert len(EXAMPLES) == 3
    ingest_batch(
        engine,
        [
            payment_event(payment("inpay_dec", JAN_2026 - 3600)),  # paid_at = created + 5
            payment_event(payment("inpay_jan1", JAN_2026 + 100, amount=1000)),
            payment_event(payment("inpay_jan2", JAN_2026 + 86_400 * 3, amount=2500)),
            payment_event(payment("inpay_open", JAN_2026 + 200, status="open")),
            payment_event(payment("inpay_feb", FEB_2026 + 10)),
            item_created(item("ii_old", JAN_2026, customer="cus_QXg1o8vcGmoR32")),
            item_created(item("ii_new", JAN_2026 + 50, customer="cus_QXg1o8vcGmoR32")),
            item_created(item("ii_billed", JAN_2026 + 60, customer="cus_QXg1o8vcGmoR32", invoice="in_1")),
            item_created(item("ii_gone", JAN_2026 + 70, customer="cus_QXg1o8vcGmoR32")),
            item_created(item("ii_other", JAN_2026 + 80, customer="cus_other")),
        ],
    )
    ingest_batch(engine, [item_deleted("ii_gone", JAN_2026 + 90)])
    with engine.connect() as connection:
        paid_in_january = connection.execute(text(EXAMPLES[0])).all()
        pending = connection.execute(text(EXAMPLES[1])).all()
        per_day = connection.execute(text(EXAMPLES[2])).all()
    assert [row.id for row in paid_in_january] == ["inpay_jan1", "inpay_jan2"]
    assert [row.id for row in pending] == ["ii_new", "ii_old"]
    assert [(row.currency, row.paid, row.payments) for row in per_day] == [
        ("usd", 1000, 1),
        ("usd", 2500, 1),
        ("usd", 2000, 1),
    ]
