"""Migrations go up and down on both databases and describe exactly the models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlmodel import SQLModel

import app.db.models  # noqa: F401
from app.db.engine import make_engine
from app.db.migrate import downgrade, upgrade
from tests.dbs import require_postgres, temporary_pg_database


@pytest.fixture(params=["sqlite", "postgresql"])
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
