"""The mirror writes an event asks for, planned first and executed later.

Handlers do not touch the database: they record guarded statements, already compiled and with their
parameters converted for the driver, into a ``Writes``. Ingest executes them inside the transaction it
owns (app.ingest.apply). Keeping planning apart from execution lets the two run on different cores: a replay
into SQLite plans in one process while another one writes (app.ingest.sqlite_writer). This module imports
nothing but the standard library, as that writer process needs it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy import Dialect

# (SQL text, driver parameters, executemany?): plain data, so it pickles cheaply to a writer process.
Write = tuple[str, Any, bool]


class BulkForm:
    """One statement for many rows of a PostgreSQL upsert, whose VALUES are read from one JSON
    document of the rows (``encode``: rows -> the statement's parameters): PostgreSQL plans and runs
    one statement instead of one per row, and the rows are encoded in one C call instead of a driver
    conversion per value (a page of 100 objects: bench/README.md). ``key``: the conflict columns
    (their parameters have their names); ``returning``: the same statement returning the key of
    every row it wrote, to tell which event of a batch wrote which rows."""

    __slots__ = ("encode", "key", "returning", "sql")

    def __init__(self, sql: str, key: tuple[str, ...], encode: Callable[[Sequence[Any]], Any]) -> None:
        self.sql, self.key, self.encode = sql, key, encode
        self.returning = f"{sql} RETURNING {', '.join(key)}"

    def key_of(self, row: dict[str, Any]) -> Any:
        """The key of a row of parameters, as a RETURNING row of ``returning`` gives it back."""
        if len(self.key) == 1:
            return row[self.key[0]]
        return tuple(row[name] for name in self.key)

    def params(self, rows: Sequence[dict[str, Any]]) -> Any:
        """The parameters for ``rows`` (dicts by name), or None when two rows share a key: one
        statement cannot upsert a row twice, so those run one by one, in order."""
        key_of = self.key_of
        if len({key_of(row) for row in rows}) != len(rows):
            return None
        return self.encode(rows)


# Upsert SQL -> its bulk form, registered where the upsert is compiled for PostgreSQL
# (app.mirror.upsert); text, so that what is planned stays plain data.
BULK_FORMS: dict[str, BulkForm] = {}

# SQL -> the rows one row of its parameters reads or writes, as hashable names (e.g. ("invoices",
# "in_1")), registered where the SQL is made. Events of a batch whose footprints are disjoint may be
# written in any order with the same effect and the same row counts, so their writes can be merged.
FOOTPRINTS: dict[str, Callable[[Any], Iterable[Hashable]]] = {}

# SQL that reads and changes only rows an index finds by a parameter (the lines of one invoice),
# registered where the SQL is made: on PostgreSQL it is PREPAREd like an insert, and planned with
# sequential scans off (app.mirror.pipelined_query), since planning it on every run cost more than running it.
KEYED_STATEMENTS: set[str] = set()


def run_write(cursor: Any, sql: str, params: Any, many: bool) -> None:
    """One planned write on ``cursor``: several rows as one statement through their bulk form when
    the statement has one, else executemany."""
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
        run_write(cursor, sql, params, many)
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


class Queued:
    """The statements of several events sent into a psycopg pipeline, and how to read each event's
    rows changed once it is synced (``row_counts``)."""

    def __init__(self, events: int) -> None:
        self.cursors: list[list[Any]] = [[] for _ in range(events)]  # each event's own statements
        # Merged statements: the cursor, then who wrote each row it returns (key -> event).
        self.merged: list[tuple[Any, dict[Any, int]]] = []

    def send(self, driver: Any, event: int, write: Write) -> None:
        cursor = driver.cursor()
        run_write(cursor, *write)
        self.cursors[event].append(cursor)

    def changes(self) -> list[int]:
        changed = [sum(cursor.rowcount for cursor in mine) for mine in self.cursors]
        for cursor, writer_of in self.merged:
            for row in cursor.fetchall():
                changed[writer_of[row[0] if len(row) == 1 else tuple(row)]] += 1
        for mine in self.cursors:
            for cursor in mine:
                cursor.close()
        for cursor, _ in self.merged:
            cursor.close()
        return changed


def queue_writes_of_events(driver: Any, events_writes: Sequence[Sequence[Write]]) -> Queued:
    """Send the writes of several events into the psycopg pipeline open on ``driver``; read each
    event's row counts with ``row_counts`` once the pipeline is synced.

    Events whose footprints (FOOTPRINTS) are disjoint commute: the same rows end the same and each
    event changes the same rows whatever their order. So the events are put in layers (an event
    goes after every earlier event it shares a row with), and within a layer the writes of one
    statement are merged across events: upserts with a bulk form become one statement whose
    RETURNING says which event wrote which row. A batch of 500 distinct events then sends tens of
    statements instead of thousands (bench/README.md). Without a footprint for every write, each
    event's writes are sent in turn."""
    queued = Queued(len(events_writes))
    planned = [coalesced(writes) for writes in events_writes]
    layers = _layers(planned) if _worth_merging(planned) else None
    if layers is None:
        for event, writes in enumerate(planned):
            for write in writes:
                queued.send(driver, event, write)
        return queued
    for layer in layers:
        for sql, entries in _stages(planned, layer):
            _send_merged(driver, queued, sql, entries)
    return queued


# Merging pays for its footprints and returned rows when the statements it saves are many for their
# rows (webhook and replay batches: one to three rows a statement); a page that sync fetched is one
# statement of 100 rows already.
MAX_ROWS_PER_STATEMENT_TO_MERGE = 8


def _worth_merging(planned: Sequence[Sequence[Write]]) -> bool:
    if len(planned) < 2:
        return False
    statements = sum(len(writes) for writes in planned)
    rows = sum(len(params) if many else 1 for writes in planned for _, params, many in writes)
    return rows <= MAX_ROWS_PER_STATEMENT_TO_MERGE * statements


def _layers(planned: Sequence[Sequence[Write]]) -> list[list[int]] | None:
    """The events in layers, in order: each event in the layer after the last one holding an event
    it shares a row with. None when a write has no footprint, or when no two events could merge."""
    last_layer: dict[Hashable, int] = {}
    layers: list[list[int]] = []
    for event, writes in enumerate(planned):
        names: set[Hashable] = set()
        for sql, params, many in writes:
            footprint_of = FOOTPRINTS.get(sql)
            if footprint_of is None:
                return None
            for row in params if many else (params,):
                names.update(footprint_of(row))
        layer = 1 + max((last_layer[name] for name in names if name in last_layer), default=-1)
        if layer == len(layers):
            layers.append([])
        layers[layer].append(event)
        for name in names:
            last_layer[name] = layer
    return layers if len(layers) < len(planned) else None


Stage = tuple[str, list[tuple[int, Any, bool]]]  # SQL, then (event, parameters, executemany?) in order


def _stages(planned: Sequence[Sequence[Write]], layer: list[int]) -> list[Stage]:
    """The writes of a layer's events grouped by statement, in an order that keeps each event's own
    order of statements (a topological order of "comes before in some event", the first seen first).
    An event with a statement twice keeps both, in turn. If the events disagree on an order, they
    are sent one after another."""
    entries: dict[tuple[str, int], list[tuple[int, Any, bool]]] = {}
    after: dict[tuple[str, int], set[tuple[str, int]]] = {}
    waiting_for: dict[tuple[str, int], int] = {}
    for event in layer:
        seen: dict[str, int] = {}
        previous: tuple[str, int] | None = None
        for sql, params, many in planned[event]:
            stage = (sql, seen.get(sql, 0))
            seen[sql] = stage[1] + 1
            if stage not in entries:
                entries[stage], after[stage], waiting_for[stage] = [], set(), 0
            entries[stage].append((event, params, many))
            if previous is not None and stage not in after[previous]:
                after[previous].add(stage)
                waiting_for[stage] += 1
            previous = stage
    first_seen = {stage: position for position, stage in enumerate(entries)}
    ready = [stage for stage in entries if waiting_for[stage] == 0]
    ordered: list[Stage] = []
    while ready:
        stage = ready.pop(0)
        ordered.append((stage[0], entries[stage]))
        for following in sorted(after[stage], key=first_seen.__getitem__):
            waiting_for[following] -= 1
            if waiting_for[following] == 0:
                ready.append(following)
    if len(ordered) < len(entries):  # a cycle: no order suits every event
        return [(sql, [(event, params, many)]) for event in layer for sql, params, many in planned[event]]
    return ordered


def _send_merged(driver: Any, queued: Queued, sql: str, entries: list[tuple[int, Any, bool]]) -> None:
    """One stage: one statement for the rows of every event when the upsert has a bulk form and no
    row comes twice; otherwise each event's write on its own."""
    bulk = BULK_FORMS.get(sql) if len(entries) > 1 else None
    if bulk is not None:
        rows: list[Any] = []
        writer_of: dict[Any, int] = {}
        for event, params, many in entries:
            for row in params if many else (params,):
                rows.append(row)
                writer_of[bulk.key_of(row)] = event
        if len(writer_of) == len(rows):  # no row twice: what bulk.params checks, done above
            cursor = driver.cursor()
            cursor.execute(bulk.returning, bulk.encode(rows))
            queued.merged.append((cursor, writer_of))
            return
    for event, params, many in entries:
        queued.send(driver, event, (sql, params, many))


def row_counts(queued: Queued) -> list[int]:
    """Each event's rows changed, from what ``queue_writes_of_events`` sent (its cursors closed)."""
    return queued.changes()
