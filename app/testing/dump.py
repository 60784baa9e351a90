"""Read a whole mirror back for comparisons: every table, every row, sorted, with typed values."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine, Table, select
from sqlmodel import SQLModel

import app.db.models  # noqa: F401  (registers the tables)

Row = dict[str, Any]
Dump = dict[str, list[Row]]

# When and how an event reached the database is the only thing two replays may disagree on.
UNCOMPARED = {"stripe_events": frozenset({"received_at", "processed_at", "source"})}
# Where a sync stands is not part of the mirror: a replay rebuilds the mirror, not the sync's state.
NOT_MIRRORED = frozenset({"sync_windows", "sync_state"})


def _sorted_rows(connection: Connection, table: Table, where: dict[str, Any]) -> list[Row]:
    query = select(table)
    for column, value in where.items():
        query = query.where(table.c[column] == value)
    found = [dict(row._mapping) for row in connection.execute(query)]
    # Sorted here, not by ORDER BY: PostgreSQL's collation may order text unlike SQLite.
    return sorted(found, key=lambda row: tuple(row[column.name] for column in table.primary_key.columns))


def rows(engine: Engine, table_name: str, **where: Any) -> list[Row]:
    """Every row of one table (or those whose columns equal ``where``), with typed values (JSON
    columns decoded, booleans as bool), sorted by primary key."""
    with engine.connect() as connection:
        return _sorted_rows(connection, SQLModel.metadata.tables[table_name], where)


def dump(engine: Engine) -> Dump:
    """Every table of the mirror read as ``rows`` reads one, in one transaction, without the
    UNCOMPARED columns: two mirrors that hold the same data dump equal."""
    tables: Dump = {}
    with engine.connect() as connection:
        for table in SQLModel.metadata.sorted_tables:
            if table.name in NOT_MIRRORED:
                continue
            skipped = UNCOMPARED.get(table.name, frozenset())
            tables[table.name] = [
                {key: value for key, value in row.items() if key not in skipped}
                for row in _sorted_rows(connection, table, {})
            ]
    return tables
