"""Revision 0002 goes down to 0001 and back up on both databases, keeping the 0001 data."""

from __future__ import annotations

from sqlalchemy import text

from app.db.engine import make_engine
from app.db.migrate import downgrade, upgrade
from tests.db.test_migrations import empty_db_url, table_names  # noqa: F401  (fixture)

BILLING_TABLES = {
    "invoices",
    "invoice_line_items",
    "invoice_line_sets",
    "invoice_item_invoices",
    "billing_meters",
    "billing_alerts",
    "billing_alert_triggers",
    "invoice_rendering_templates",
    "billing_meter_error_reports",
}


def test_0002_down_and_up_keeps_earlier_data(empty_db_url: str) -> None:  # noqa: F811
    upgrade(empty_db_url, "0001")
    before = table_names(empty_db_url)
    assert not before & BILLING_TABLES
    engine = make_engine(empty_db_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO invoice_items (id, deleted, last_event_id, last_event_created,"
                    " version_precedence, version_tiebreak) VALUES ('ii_kept', false, 'evt_1', 1, 0, 0)"
                )
            )
        upgrade(empty_db_url, "0002")
        assert table_names(empty_db_url) == before | BILLING_TABLES
        downgrade(empty_db_url, "0001")
        assert table_names(empty_db_url) == before
        upgrade(empty_db_url)
        with engine.connect() as connection:
            assert connection.execute(text("SELECT id FROM invoice_items")).scalars().all() == ["ii_kept"]
    finally:
        engine.dispose()
