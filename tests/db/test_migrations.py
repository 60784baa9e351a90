"""Migrations go up and down on both databases and describe exactly the models; revision 0002 goes down
to 0001 and back up, keeping the 0001 data."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlmodel import SQLModel

import app.db.models  # noqa: F401
from app.db.engine import make_engine
from app.db.migrate import downgrade, upgrade
from tests.support import BACKENDS, require_postgres, temporary_pg_database


@pytest.fixture(params=BACKENDS)
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path, pg_problem: str | None) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'migrations.db'}"
        return
    require_postgres(pg_problem)
    with temporary_pg_database("bm_migrations") as url:
        yield url


def table_names(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def schema_differences(url: str) -> list[object]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return list(compare_metadata(context, SQLModel.metadata))
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(empty_db_url: str) -> None:
    upgrade(empty_db_url)
    assert table_names(empty_db_url) == set(SQLModel.metadata.tables)
    downgrade(empty_db_url, "base")
    assert table_names(empty_db_url) == set()
    upgrade(empty_db_url)
    assert table_names(empty_db_url) == set(SQLModel.metadata.tables)


def test_models_and_migrations_agree(empty_db_url: str) -> None:
    upgrade(empty_db_url)
    assert schema_differences(empty_db_url) == []


def test_the_check_notices_a_model_without_migration(empty_db_url: str) -> None:
    """The agreement test can fail: a column only in the models is reported."""
    upgrade(empty_db_url)
    from sqlalchemy import Column, Integer

    table = SQLModel.metadata.tables["invoice_payments"]
    extra = Column("not_in_any_migration", Integer)
    table.append_column(extra)
    try:
        assert any("not_in_any_migration" in str(diff) for diff in schema_differences(empty_db_url))
    finally:
        table._columns.remove(extra)  # type: ignore[attr-defined]


# The tables revision 0002 adds.
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


def test_0002_down_and_up_keeps_earlier_data(empty_db_url: str) -> None:
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
