"""Dump a whole mirror for comparisons: every table, every row, sorted, with typed values."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlmodel import SQLModel

import app.db.models  # noqa: F401
from app.db.engine import make_engine

# When an event was received or processed is the only thing two replays may disagree on.
UNCOMPARED = {"stripe_events": {"received_at", "processed_at"}}

Dump = dict[str, list[tuple[tuple[str, Any], ...]]]


def dump_mirror(database_url: str) -> Dump:
    engine = make_engine(database_url, for_writing=False)
    tables: Dump = {}
    try:
        with engine.connect() as connection:
            for table in SQLModel.metadata.sorted_tables:
                skipped = UNCOMPARED.get(table.name, set())
                rows = connection.execute(select(table)).mappings()
                tables[table.name] = sorted(
                    tuple(sorted((key, value) for key, value in row.items() if key not in skipped))
                    for row in rows
                )
    finally:
        engine.dispose()
    return tables


def merge_applied_and_stale(dump: Dump) -> Dump:
    """A copy where stripe_events.outcome no longer tells applied from stale.

    Whether one event found its rows newer (stale) or not (applied) depends on what came before it,
    so it differs between delivery orders although the mirror does not."""
    merged = dict(dump)
    merged["stripe_events"] = sorted(
        tuple(
            (key, "applied|stale" if key == "outcome" and value in ("applied", "stale") else value)
            for key, value in row
        )
        for row in dump["stripe_events"]
    )
    return merged
