"""The mirror writes an event asks for, planned first and executed later.

Handlers do not touch the database: they record guarded statements, already compiled and with their
parameters converted for the driver, into a ``Writes``. Ingest executes them inside the transaction it
owns (app.ingest.apply). Keeping planning apart from execution lets the two run on different cores: a replay
into SQLite plans in one process while another one writes (app.ingest.sqlite_writer). This module imports
nothing but the standard library, as that writer process needs it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy import Dialect

# (SQL text, driver parameters, executemany?): plain data, so it pickles cheaply to a writer process.
Write = tuple[str, Any, bool]


class BulkForm:
    """One statement for many rows of a PostgreSQL upsert, whose VALUES are read from one JSON
    document of the rows (``encode``: rows -> the statement's parameters): PostgreSQL plans and runs
    one statement instead of one per row, and the rows are encoded in one C call instead of a driver
    conversion per value (a page of 100 objects: bench/README.md). ``key``: the conflict columns."""

    __slots__ = ("encode", "key", "sql")

    def __init__(self, sql: str, key: tuple[str, ...], encode: Callable[[Sequence[Any]], Any]) -> None:
        self.sql, self.key, self.encode = sql, key, encode

    def params(self, rows: Sequence[dict[str, Any]]) -> Any:
        """The parameters for ``rows`` (dicts by name), or None when two rows share a key: one
        statement cannot upsert a row twice, so those run one by one, in order."""
        if len(self.key) == 1:
            (name,) = self.key
            keys: set[Any] = {row[name] for row in rows}
        else:
            keys = {tuple(row[name] for name in self.key) for row in rows}
        return self.encode(rows) if len(keys) == len(rows) else None


# Upsert SQL -> its bulk form, registered where the upsert is compiled for PostgreSQL
# (app.mirror.upsert); text, so that what is planned stays plain data.
BULK_FORMS: dict[str, BulkForm] = {}


def _run(cursor: Any, sql: str, params: Any, many: bool) -> None:
    if many:
        bulk = BULK_FORMS.get(sql) if len(params) > 1 else None
        arrays = bulk.params(params) if bulk is not None else None
        if bulk is not None and arrays is not None:
            cursor.execute(bulk.sql, arrays)
        else:
            cursor.executemany(sql, params)
    else:
        cursor.execute(sql, params)


class Writes:
    """The statements planned for one event, in execution order, compiled for ``dialect``."""

    __slots__ = ("account", "dialect", "planned")

    def __init__(self, dialect: Dialect, account: str | None = None) -> None:
        self.dialect = dialect
        self.planned: list[Write] = []
        # The Connect account of the event being planned (None: the platform's own): every row it
        # writes records it.
        self.account = account

    def add(self, sql: str, params: Any, many: bool = False) -> None:
        self.planned.append((sql, params, many))


def coalesced(writes: Sequence[Write]) -> Sequence[Write]:
    """Consecutive writes of the same statement as one executemany (the objects of a fetched page):
    the driver converts the statement once instead of once per row (psycopg re-parses a statement past
    its cache's size limits on every execute). Row counts add up the same."""
    if len(writes) < 2:
        return writes
    merged: list[Write] = []
    for sql, params, many in writes:
        if merged and merged[-1][0] == sql:
            _, before, before_many = merged[-1]
            rows = [*(before if before_many else [before]), *(params if many else [params])]
            merged[-1] = (sql, rows, True)
        else:
            merged.append((sql, params, many))
    return merged


def execute_writes(driver: Any, writes: Sequence[Write]) -> int:
    """Run ``writes`` on a DBAPI connection; return the number of rows they inserted, changed or
    deleted (a guarded upsert whose WHERE is false changes none)."""
    changed = 0
    for sql, params, many in coalesced(writes):
        cursor = driver.cursor()
        _run(cursor, sql, params, many)
        changed += cursor.rowcount
    return changed


def execute_writes_of_events(driver: Any, events_writes: Sequence[Sequence[Write]]) -> list[int]:
    """``execute_writes`` for several events in turn, the same statements in the same order.

    On a driver with pipelines (psycopg), they are all sent at once and their row counts read after
    one sync: one round trip to PostgreSQL for the whole batch instead of one per statement. A failing
    statement raises here, at the sync, not at its own call: the caller redoes the batch carefully."""
    pipeline = getattr(driver, "pipeline", None)
    if pipeline is None:  # sqlite3: in process, a statement costs no round trip
        return [execute_writes(driver, writes) for writes in events_writes]
    with pipeline() as sent:
        cursors = queue_writes_of_events(driver, events_writes)
        sent.sync()
    return row_counts(cursors)


def queue_writes_of_events(driver: Any, events_writes: Sequence[Sequence[Write]]) -> list[list[Any]]:
    """Send the writes of several events into the psycopg pipeline open on ``driver``, one list of
    cursors per event; read them with ``row_counts`` once the pipeline is synced."""
    cursors: list[list[Any]] = []
    for writes in events_writes:
        mine = []
        for sql, params, many in coalesced(writes):
            cursor = driver.cursor()
            _run(cursor, sql, params, many)
            mine.append(cursor)
        cursors.append(mine)
    return cursors


def row_counts(cursors: list[list[Any]]) -> list[int]:
    """Each event's rows changed, from the cursors of ``queue_writes_of_events`` (closed here)."""
    changed = [sum(cursor.rowcount for cursor in mine) for mine in cursors]
    for mine in cursors:
        for cursor in mine:
            cursor.close()
    return changed
