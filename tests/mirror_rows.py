"""Read the mirror back in tests: whole tables as sorted plain rows, for exact comparisons."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from sqlalchemy import Engine, delete, select
from sqlmodel import SQLModel

from app.db.models import StripeEvent
from app.ingest.store import EventStore
from app.mirror.envelope import parse_event
from tests.events import encode

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


def reset(engine: Engine) -> None:
    """Empty every table, the mirror and stripe_events alike."""
    with engine.begin() as connection:
        for table in reversed(SQLModel.metadata.sorted_tables):
            connection.execute(delete(table))


def replay_in_batches(
    engine: Engine,
    pool: list[dict[str, Any]],
    order: list[int],
    batch_sizes: list[int],
    tables: tuple[str, ...],
) -> dict[str, list[dict[str, Any]]]:
    """From an empty database, ingest ``pool[i] for i in order`` in batches of the given sizes (the
    rest in one batch); every event must be stored without error. Returns the snapshot of ``tables``."""
    reset(engine)
    store = EventStore(engine)
    events = [parse_event(encode(pool[i])) for i in order]
    position, sizes = 0, iter(batch_sizes)
    while position < len(events):
        size = next(sizes, len(events))
        for result in store.ingest(events[position : position + size]):
            assert not isinstance(result, Exception) and result.error is None, result
        position += size
    return mirror_snapshot(engine, tables)


@st.composite
def deliveries(draw: st.DrawFn, pool_size: int) -> tuple[list[int], list[int]]:
    """Every event of a pool of ``pool_size`` once, in any order, plus up to 8 duplicates anywhere,
    and the batch sizes to split them into."""
    order = draw(st.permutations(range(pool_size)))
    for duplicate in draw(st.lists(st.integers(0, pool_size - 1), max_size=8)):
        order.insert(draw(st.integers(0, len(order))), duplicate)
    batch_sizes = draw(st.lists(st.integers(1, 6), max_size=len(order)))
    return order, batch_sizes
