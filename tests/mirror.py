"""Read the mirror back in tests: whole tables as sorted plain rows, for exact comparisons."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select
from sqlmodel import SQLModel

from app.models import StripeEvent

MIRROR_TABLES = ("invoice_payments", "invoice_items")


def rows(engine: Engine, table_name: str, **where: Any) -> list[dict[str, Any]]:
    table = SQLModel.metadata.tables[table_name]
    query = select(table)
    for column, value in where.items():
        query = query.where(table.c[column] == value)
    with engine.connect() as connection:
        result = [dict(row._mapping) for row in connection.execute(query)]
    return sorted(result, key=lambda row: tuple(str(row[c.name]) for c in table.primary_key.columns))


def one(engine: Engine, table_name: str, **where: Any) -> dict[str, Any]:
    found = rows(engine, table_name, **where)
    assert len(found) == 1, found
    return found[0]


def mirror_snapshot(engine: Engine, tables: tuple[str, ...] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Every mirror table in full; stripe_events without its wall-clock columns."""
    names = tables or tuple(name for name in SQLModel.metadata.tables if name != StripeEvent.__tablename__)
    return {name: rows(engine, name) for name in names}


def stored_event(engine: Engine, event_id: str) -> dict[str, Any] | None:
    found = rows(engine, StripeEvent.__tablename__, id=event_id)
    return found[0] if found else None
