"""Store and apply planned events, one transaction per batch: the core of ingest, on a DBAPI connection.

Events arrive planned (app.ingest.plan.plan_event): their stripe_events row and the guarded writes their
handler asked for. This module decides, inside one transaction, which are new, runs their writes,
records every outcome and commits. It needs nothing but the driver connection and the standard library,
so the same code runs in a receiver (app.ingest.store) and in the SQLite writer process of a replay
(app.ingest.sqlite_writer).

A batch is first applied optimistically, in a few statements and without savepoints. If a write fails,
that attempt is rolled back and the batch is redone with each event in its own savepoint, so the
failing event is stored as ``failed`` without undoing its neighbours. A handler that failed while
planning wrote nothing, so it needs no redo: its event is simply stored as failed.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable, Generator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple

from app.mirror import pipelined_query
from app.mirror.outcome import Outcome
from app.mirror.writes import (
    KEYED_STATEMENTS,
    Queued,
    Write,
    coalesced,
    execute_writes,
    execute_writes_of_events,
    queue_writes_of_events,
    row_counts,
    run_write,
)

# Hand-written back-off, not a retry library: this runs in the SQLite writer child, which loads only
# the standard library.
RETRY_DELAYS = (0.05, 0.2, 0.5, 1.0)
MAX_ERROR_CHARS = 4000
_LOOKUP_CHUNK = 5000
# Events in one speculative PostgreSQL query at most: its text stays a few megabytes.
MAX_SPECULATED_EVENTS = 5000

# stripe_events columns: the first eleven come planned with the event, the others are decided here.
EVENT_COLUMNS = (
    "id",
    "type",
    "created",
    "api_version",
    "livemode",
    "account",
    "thin",
    "object_id",
    "payload",
    "received_at",
    "source",
    "processed_at",
    "outcome",
    "attempts",
    "error",
)
OBJECT_ID = EVENT_COLUMNS.index("object_id")
PAYLOAD = EVENT_COLUMNS.index("payload")
RECEIVED_AT = EVENT_COLUMNS.index("received_at")
SOURCE = EVENT_COLUMNS.index("source")
# dead_letters columns (its id is the database's): deliveries kept byte for byte with why they were refused.
DEAD_LETTER_COLUMNS = ("received_at", "source", "reason", "message", "event_id", "event_type", "body")
MAX_DEAD_LETTER_TEXT = 255


# Named tuples, not dataclasses: thousands cross the pipe to the writer process per batch, and a
# tuple pickles several times faster.
class PlannedEvent(NamedTuple):
    """An event ready to store and apply."""

    id: str
    row: tuple[Any, ...]  # the first eleven EVENT_COLUMNS (up to source), ready for the driver
    writes: list[Write]  # none: nothing of this event is mirrored (ignored)
    error: str | None = None  # its handler raised while planning: stored as failed
    # Run in the same transaction whatever the outcome (duplicate and failed included), and not
    # counted in it: the checkpoint of a sync that fetched this snapshot (app.sync.backfill).
    after: Sequence[Write] = ()
    # A refused delivery: its dead_letters row (DEAD_LETTER_COLUMNS), stored instead of an event.
    dead_letter: tuple[Any, ...] | None = None


class IngestResult(NamedTuple):
    event_id: str
    outcome: Outcome
    duplicate: bool = False
    error: str | None = None


class DatabaseUnavailable(Exception):
    """The database could not be reached or kept failing; nothing was committed for the event."""


class NotStored(DatabaseUnavailable):
    """The database works, but neither the event nor its dead letter could be stored (a bug)."""


# PostgreSQL's classes of errors that are the event's, not the database's, though psycopg raises
# some as OperationalError: data exceptions and program limits (an index entry over 2.7 KB).
_EVENT_SQLSTATE_CLASSES = frozenset({"22", "23", "42", "54"})
# SQLite's result codes of the same kind: string or blob too big, datatype mismatch, out of range.
_EVENT_SQLITE_CODES = frozenset({18, 19, 20, 25})


def is_infrastructure_error(exc: BaseException) -> bool:
    """Errors of the connection or of concurrency (deadlock, lock timeout), not of the event.

    By the DB-API's exception names, which sqlite3, psycopg and SQLAlchemy all use, less the errors
    an event's own values cause (which retrying cannot cure)."""
    if getattr(exc, "connection_invalidated", False):
        return True
    cause = getattr(exc, "orig", None) or exc  # SQLAlchemy wraps the driver's exception
    sqlstate = getattr(cause, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate[:2] in _EVENT_SQLSTATE_CLASSES:
        return False
    sqlite_code = getattr(cause, "sqlite_errorcode", None)
    if isinstance(sqlite_code, int) and sqlite_code & 0xFF in _EVENT_SQLITE_CODES:
        return False
    return any(kind.__name__ in ("OperationalError", "InterfaceError") for kind in type(exc).__mro__)


def storable_text(value: str, limit: int = MAX_ERROR_CHARS) -> str:
    """``value`` as text every database stores (no NUL, no lone surrogate), cut to ``limit``."""
    cleaned = value.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
    return cleaned[:limit]


def dead_letter_row(
    received: Any,
    source: str,
    reason: str,
    message: str,
    body: bytes,
    event_id: Any = None,
    event_type: Any = None,
) -> tuple[Any, ...]:
    """A dead_letters row (DEAD_LETTER_COLUMNS): text made storable, the body exactly as received."""

    def short(value: Any) -> str | None:
        return storable_text(value, MAX_DEAD_LETTER_TEXT) if isinstance(value, str) else None

    return (received, source, reason, storable_text(message), short(event_id), short(event_type), body)


def refused_event(planned: PlannedEvent, exc: BaseException) -> PlannedEvent:
    """``planned`` turned into a dead letter: the database refused its stripe_events row."""
    raw = planned.row[PAYLOAD]
    body = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
    message = f"The database cannot store this event: {describe(exc)}"
    row = dead_letter_row(
        planned.row[RECEIVED_AT], planned.row[SOURCE], "unstorable", message, body, planned.id, planned.row[1]
    )
    return planned._replace(dead_letter=row)


def describe(exc: BaseException) -> str:
    """The error stored with a failed event: its type and message, never a traceback."""
    return storable_text("".join(traceback.format_exception_only(exc)).strip())


@dataclass(frozen=True)
class EventSql:
    """The stripe_events statements in one driver's parameter style."""

    store: str  # INSERT .. ON CONFLICT (id) DO NOTHING
    record: str  # the new outcome of a stored event
    dead_letter: str  # INSERT INTO dead_letters
    known: str  # (id, outcome, attempts) of the stored events among an array of ids
    ids_param: Callable[[list[str]], Any]

    @staticmethod
    def store_rows(query: pipelined_query.PipelinedQuery, rows: Sequence[tuple[Any, ...]]) -> None:
        """One INSERT of ``rows`` (EVENT_COLUMNS) into ``query``, for PostgreSQL. Without ON CONFLICT:
        an event stored meanwhile by another receiver fails it, and with it the batch, which is
        redone carefully instead of storing the event twice."""
        query.insert_values(f"INSERT INTO stripe_events ({', '.join(EVENT_COLUMNS)})", rows)


def event_sql(dialect: str) -> EventSql:
    mark = {"sqlite": "?", "postgresql": "%s"}[dialect]
    columns = ", ".join(EVENT_COLUMNS)
    store = (
        f"INSERT INTO stripe_events ({columns}) VALUES ({', '.join([mark] * len(EVENT_COLUMNS))})"
        " ON CONFLICT (id) DO NOTHING"
    )
    record = (
        f"UPDATE stripe_events SET outcome = {mark}, error = {mark}, processed_at = {mark},"
        f" attempts = {mark} WHERE id = {mark}"
    )
    dead_letter = (
        f"INSERT INTO dead_letters ({', '.join(DEAD_LETTER_COLUMNS)})"
        f" VALUES ({', '.join([mark] * len(DEAD_LETTER_COLUMNS))})"
    )
    if dialect == "sqlite":
        # One statement text whatever the number of ids: they travel as one JSON array.
        known = (
            "SELECT id, outcome, attempts FROM stripe_events"
            " WHERE id IN (SELECT value FROM json_each(?)) ORDER BY id"
        )
        return EventSql(store, record, dead_letter, known, json.dumps)
    # FOR UPDATE: another receiver cannot re-apply the same failed event meanwhile.
    known = "SELECT id, outcome, attempts FROM stripe_events WHERE id = ANY(%s) ORDER BY id FOR UPDATE"
    return EventSql(store, record, dead_letter, known, list)


def stored_outcomes(driver: Any, sql: EventSql, ids: list[str]) -> dict[str, tuple[str, int]]:
    """(outcome, attempts) of the events among ``ids`` that are already stored."""
    stored: dict[str, tuple[str, int]] = {}
    for start in range(0, len(ids), _LOOKUP_CHUNK):
        chunk = ids[start : start + _LOOKUP_CHUNK]
        for event_id, outcome, attempts in driver.execute(sql.known, (sql.ids_param(chunk),)).fetchall():
            stored[event_id] = (outcome, attempts)
    return stored


class RedoCarefully(Exception):
    """The optimistic pass met a failing write or a concurrent writer: redo the batch carefully."""


class StoredBefore(Exception):
    """The speculative pass wrote for an event that turned out to be stored already: redo the batch
    (rolled back) with the lookup first."""


def _processed_at(outcome: Outcome, planned: PlannedEvent) -> Any:
    """A failed event is not processed; any other was processed when it was received."""
    return None if outcome == Outcome.FAILED else planned.row[RECEIVED_AT]


def _outcome_of(changed: int, planned: PlannedEvent) -> Outcome:
    if not planned.writes:
        return Outcome.IGNORED
    return Outcome.APPLIED if changed > 0 else Outcome.STALE


def apply_optimistically(
    driver: Any,
    sql: EventSql,
    events: Sequence[PlannedEvent],
    order: Sequence[int],
    *,
    speculate: bool = True,
    ahead: WrittenAhead | None = None,
) -> list[IngestResult]:
    """The whole batch without savepoints, in a handful of statements.

    1. One SELECT finds the events already stored, and locks them on PostgreSQL (SQLite writers
       hold the database lock from BEGIN IMMEDIATE on).
    2. The writes run in ``order`` for new events and for stored failed ones, all sent at once
       (app.mirror.writes.execute_writes_of_events: one round trip on PostgreSQL).
    3. One executemany INSERT .. ON CONFLICT DO NOTHING stores the new events with their outcome,
       one executemany UPDATE records the outcome of the re-applied ones, and one INSERT the dead
       letters (refused deliveries).

    On PostgreSQL (app.mirror.pipelined_query) and with ``speculate``, the batch takes two round trips,
    BEGIN and COMMIT included, and no SELECT: the writes of every event of the batch, as if none
    were stored yet (the usual case); then step 3 together with the COMMIT, its INSERT without ON
    CONFLICT. If an event of the batch was stored before (or meanwhile, by another receiver, whose
    transaction this INSERT waits for), the INSERT fails on stripe_events' primary key and
    StoredBefore propagates: the caller rolls back and calls again without ``speculate``. That pass's
    first query may come written ``ahead`` (``write_ahead`` of these events in this order).

    If a statement raises for anything but the database itself, or if the INSERT stores fewer rows
    than expected (another receiver stored one of these events after step 1), RedoCarefully
    propagates and the caller rolls the transaction back.
    """
    try:
        return _apply_optimistically(driver, sql, events, order, speculate, ahead)
    except (RedoCarefully, StoredBefore):
        raise
    except Exception as exc:
        if is_infrastructure_error(exc):
            raise
        if speculate and _stored_already(exc):
            raise StoredBefore(describe(exc)) from exc
        raise RedoCarefully(f"a statement of this batch failed: {describe(exc)}") from exc


def _stored_already(exc: BaseException) -> bool:
    """Whether ``exc`` is PostgreSQL refusing a second stripe_events row with the same id."""
    diag = getattr(exc, "diag", None)
    return getattr(exc, "sqlstate", None) == "23505" and getattr(diag, "table_name", None) == "stripe_events"


def _first_seen(events: Sequence[PlannedEvent], order: Sequence[int]) -> tuple[dict[str, int], list[int]]:
    """Where each event id first comes in ``order``, and the refused deliveries (dead letters)."""
    first_seen: dict[str, int] = {}
    dead_letters: list[int] = []
    for index in order:
        if events[index].dead_letter is not None:
            dead_letters.append(index)
        else:
            first_seen.setdefault(events[index].id, index)
    return first_seen, dead_letters


class WrittenAhead(NamedTuple):
    """A batch's first query on PostgreSQL (every write, as if no event were stored yet), written by
    the thread that planned the batch while the writer thread waits for the database: the writer
    only sends it (a replay, bench/README.md, fifth session)."""

    order: list[int]
    query: pipelined_query.PipelinedQuery  # written without a connection, adopted by the transaction's
    queued: Queued
    to_apply: list[int]


def write_ahead(events: Sequence[PlannedEvent], *, keep_order: bool = False) -> WrittenAhead | None:
    """The first query of the batch's speculative pass (``_apply_in_two_queries``), or None when the
    batch would not take that pass (one event, or more than MAX_SPECULATED_EVENTS)."""
    if len(events) < 2:
        return None
    order = apply_order(events, keep_order)
    first_seen, _ = _first_seen(events, order)
    if len(first_seen) > MAX_SPECULATED_EVENTS:
        return None
    to_apply = _to_apply(events, order, first_seen, {})
    query = pipelined_query.PipelinedQuery()
    queued = queue_writes_of_events(query, [events[index].writes for index in to_apply])
    return WrittenAhead(order, query, queued, to_apply)


def _apply_optimistically(
    driver: Any,
    sql: EventSql,
    events: Sequence[PlannedEvent],
    order: Sequence[int],
    speculate: bool,
    ahead: WrittenAhead | None = None,
) -> list[IngestResult]:
    first_seen, dead_letters = _first_seen(events, order)
    if speculate and len(first_seen) <= MAX_SPECULATED_EVENTS and pipelined_query.usable(driver):
        lone = write_lone_event(driver, events)
        if lone is not None:
            with pipelined_query.sending(lone.query):
                lone.query.send()
            return [lone.result()]
        with pipelined_query.transaction(driver) as query:
            return _apply_in_two_queries(query, sql, events, order, first_seen, dead_letters, ahead)

    stored = stored_outcomes(driver, sql, sorted(first_seen))
    to_apply = _to_apply(events, order, first_seen, stored)
    changes = execute_writes_of_events(driver, [events[index].writes for index in to_apply])
    outcomes = _outcomes(events, order, first_seen, stored, dict(zip(to_apply, changes, strict=True)))
    if outcomes.new_rows:
        cursor = driver.cursor()
        cursor.executemany(sql.store, outcomes.new_rows)
        if cursor.rowcount != len(outcomes.new_rows):
            raise RedoCarefully("an event of this batch was stored concurrently")
    if outcomes.reapplied:
        driver.cursor().executemany(sql.record, outcomes.reapplied)
    if dead_letters:
        driver.cursor().executemany(sql.dead_letter, [events[index].dead_letter for index in dead_letters])
    followups = [write for index in order for write in events[index].after]
    if followups:
        execute_writes(driver, followups)
    return outcomes.results


def _stored_with_its_write(planned: PlannedEvent) -> tuple[str, dict[str, Any]] | None:
    """A lone event (``_lone_event_with_writes``) whose one write is a single-row insert or upsert,
    as one statement that runs the write and stores the event with its outcome (applied when the
    write returned a row): one round trip and no BEGIN or COMMIT on PostgreSQL. None for any other
    (``write_lone_event`` writes the rest between BEGIN and COMMIT)."""
    if len(planned.writes) != 1:
        return None
    write_sql, params, many = planned.writes[0]
    if many or not isinstance(params, dict):
        return None
    if not pipelined_query.template_of(write_sql).preparable:  # (an INSERT that reads no table)
        return None
    return _store_with_write_sql(write_sql), {**params, **_event_row_params(planned)}


# What the one statement of _stored_with_its_write calls its write (and its event row's parameters).
_CHANGED = "billing_mirror_changed"


def _event_row_params(planned: PlannedEvent) -> dict[str, Any]:
    """The planned columns of the event's stripe_events row, by their parameter names."""
    return dict(zip(_EVENT_ROW_NAMES, planned.row, strict=True))


_EVENT_ROW_NAMES = tuple(f"{_CHANGED}_{position}" for position in range(SOURCE + 1))


@lru_cache(maxsize=256)
def _store_with_write_sql(write_sql: str) -> str:
    return f"WITH {_CHANGED} AS ({write_sql} RETURNING 1) " + _lone_event_row_sql(
        f"EXISTS (SELECT FROM {_CHANGED})"
    )


def _lone_event_row_sql(changed_a_row: str) -> str:
    """The INSERT of a lone event's stripe_events row (``_event_row_params``), applied when the SQL
    condition ``changed_a_row`` holds, else stale; it returns the outcome."""
    planned = ", ".join(f"%({name})s" for name in _EVENT_ROW_NAMES)
    return (
        f"INSERT INTO stripe_events ({', '.join(EVENT_COLUMNS)})"
        f" VALUES ({planned}, %({_EVENT_ROW_NAMES[RECEIVED_AT]})s,"  # processed when received (not failed)
        f" CASE WHEN {changed_a_row} THEN '{Outcome.APPLIED.value}'"
        f" ELSE '{Outcome.STALE.value}' END, 1, NULL) RETURNING outcome"
    )


# A transaction-local setting (it ends with the transaction) that a write of a lone event which
# changed a row sets, so that the event's stripe_events row takes its outcome in the same round trip.
_CHANGED_SETTING = "billing_mirror.changed_a_row"


def _lone_event_with_writes(events: Sequence[PlannedEvent]) -> PlannedEvent | None:
    """The event of a batch of one whose writes can tell in SQL whether they changed a row (none
    returns rows of its own), as deliveries come one at a time; None for any other batch."""
    if len(events) != 1:
        return None
    planned = events[0]
    if planned.dead_letter is not None or planned.error is not None or planned.after or not planned.writes:
        return None
    if any(_returns_rows(write_sql) for write_sql, _, _ in planned.writes):
        return None
    return planned


@lru_cache(maxsize=512)
def _returns_rows(write_sql: str) -> bool:
    """Whether a write returns rows of its own (read per statement, not per event)."""
    return " RETURNING " in write_sql


@lru_cache(maxsize=512)
def _flagging_sql(write_sql: str) -> str:
    """``write_sql`` setting _CHANGED_SETTING when it changes a row (PREPAREd as it would be)."""
    flagging = (
        f"WITH {_CHANGED} AS ({write_sql} RETURNING 1)"
        f" SELECT set_config('{_CHANGED_SETTING}', 'yes', true) WHERE EXISTS (SELECT FROM {_CHANGED})"
    )
    if write_sql in KEYED_STATEMENTS:
        KEYED_STATEMENTS.add(flagging)
    return flagging


@lru_cache(maxsize=1)
def _store_flagged_sql() -> str:
    """The stripe_events row of a lone event: applied when one of its writes changed a row, else stale."""
    return _lone_event_row_sql(f"current_setting('{_CHANGED_SETTING}', true) = 'yes'")


class _FlaggingCursor:
    """A cursor of a PipelinedQuery whose statements set _CHANGED_SETTING when they change a row;
    what they return is not read."""

    __slots__ = ("_query",)

    def __init__(self, query: pipelined_query.PipelinedQuery) -> None:
        self._query = query

    def execute(self, sql: str, params: Any = None) -> None:
        self._query.add_unread(_flagging_sql(sql), params)

    def executemany(self, sql: str, params_seq: Sequence[Any]) -> None:
        for params in params_seq:
            self.execute(sql, params)


class LoneEvent(NamedTuple):
    """The one round trip of a lone event (``write_lone_event``), written, not sent yet."""

    id: str
    query: pipelined_query.PipelinedQuery
    answer: pipelined_query.DeferredCursor  # its stripe_events row's outcome, once the query is sent

    def result(self) -> IngestResult:
        (outcome,) = self.answer.fetchall()[0]
        return IngestResult(self.id, Outcome(outcome))


def write_lone_event(driver: Any, events: Sequence[PlannedEvent]) -> LoneEvent | None:
    """A batch of one event whose writes can tell in SQL whether they changed a row, as one round trip
    on ``driver`` (as deliveries come one at a time), or None for any other batch. Like the first pass
    of ``_apply_in_two_queries``, as if the event were not stored yet: if it was, its INSERT fails.

    A single-row write goes with the event's row in one statement, its own transaction
    (``_stored_with_its_write``). Several go between BEGIN and COMMIT: a write that changes a row sets
    a setting of the transaction, from which the event's row takes its outcome."""
    planned = _lone_event_with_writes(events)
    if planned is None:
        return None
    folded = _stored_with_its_write(planned)
    query = pipelined_query.PipelinedQuery(driver, in_block=folded is None)
    if folded is not None:
        return LoneEvent(planned.id, query, query.execute(*folded))
    query.command("BEGIN")
    flagging = _FlaggingCursor(query)
    for write in coalesced(planned.writes):
        run_write(flagging, *write)
    answer = query.execute(_store_flagged_sql(), _event_row_params(planned))
    query.command("COMMIT")
    return LoneEvent(planned.id, query, answer)


def _apply_in_two_queries(
    query: pipelined_query.PipelinedQuery,
    sql: EventSql,
    events: Sequence[PlannedEvent],
    order: Sequence[int],
    first_seen: dict[str, int],
    dead_letters: list[int],
    ahead: WrittenAhead | None,
) -> list[IngestResult]:
    """The batch on PostgreSQL in two round trips, BEGIN and COMMIT included (``_two_queries``),
    each sent from this thread."""
    passes = _two_queries(query, sql, events, order, first_seen, dead_letters, ahead)
    while (results := _next_send(passes)) is None:
        query.send()
    return results


async def apply_on_loop(
    driver: Any, sql: EventSql, events: Sequence[PlannedEvent]
) -> list[IngestResult] | None:
    """A batch applied as ``_apply_optimistically`` first tries it (a lone event in its one round trip,
    else the two of ``_two_queries``), its round trips awaited on the running event loop, which
    serves other requests meanwhile; ``driver`` is a psycopg connection outside any transaction.
    None when the batch would not take that path (nothing sent). If it raises, a transaction may be
    left open: the caller closes the connection (PostgreSQL rolls it back)."""
    if not pipelined_query.usable(driver):
        return None
    lone = write_lone_event(driver, events)
    if lone is not None:
        await lone.query.send_on_loop()
        return [lone.result()]
    order = apply_order(events, False)
    first_seen, dead_letters = _first_seen(events, order)
    if len(first_seen) > MAX_SPECULATED_EVENTS:
        return None
    query = pipelined_query.PipelinedQuery(driver)
    query.command("BEGIN")
    passes = _two_queries(query, sql, events, order, first_seen, dead_letters, None)
    while (results := _next_send(passes)) is None:
        await query.send_on_loop()
    return results


def _next_send(passes: Generator[None, None, list[IngestResult]]) -> list[IngestResult] | None:
    """Run ``_two_queries`` up to its next send (None: send the query now), or to its end: its results."""
    try:
        next(passes)
    except StopIteration as done:
        results: list[IngestResult] = done.value
        return results
    return None


def _two_queries(
    query: pipelined_query.PipelinedQuery,
    sql: EventSql,
    events: Sequence[PlannedEvent],
    order: Sequence[int],
    first_seen: dict[str, int],
    dead_letters: list[int],
    ahead: WrittenAhead | None,
) -> Generator[None, None, list[IngestResult]]:
    """The batch in two round trips: every write, as if no event were stored yet (the usual case),
    then the event rows with the COMMIT. It yields when ``query`` is to be sent, and returns the
    results."""
    if ahead is None:
        to_apply = _to_apply(events, order, first_seen, {})
        queued = queue_writes_of_events(query, [events[index].writes for index in to_apply])
    else:
        query.adopt(ahead.query)
        to_apply, queued = ahead.to_apply, ahead.queued
    yield
    changes = row_counts(queued)
    outcomes = _outcomes(events, order, first_seen, {}, dict(zip(to_apply, changes, strict=True)))
    # The rest and the COMMIT in one round trip; an INSERT of an event stored meanwhile fails.
    if outcomes.new_rows:  # (nothing is re-applied here: a stored failed event fails the INSERT too)
        sql.store_rows(query, outcomes.new_rows)
    if dead_letters:
        query.cursor().executemany(sql.dead_letter, [events[index].dead_letter for index in dead_letters])
    followups = [write for index in order for write in events[index].after]
    if followups:
        row_counts(queue_writes_of_events(query, [followups]))
    query.command("COMMIT")
    yield
    return outcomes.results


def _to_apply(
    events: Sequence[PlannedEvent], order: Sequence[int], first_seen: dict[str, int], stored: dict[str, Any]
) -> list[int]:
    """The events whose writes run: the first copy of each event not stored yet or stored as failed,
    unless its handler failed."""
    return [
        index
        for index in order
        if events[index].dead_letter is None
        and first_seen[events[index].id] == index
        and events[index].error is None
        and (stored.get(events[index].id) is None or stored[events[index].id][0] == Outcome.FAILED)
    ]


class _Outcomes(NamedTuple):
    results: list[IngestResult]  # in the batch's order
    new_rows: list[tuple[Any, ...]]  # stripe_events rows (EVENT_COLUMNS) of the new events
    reapplied: list[tuple[Any, ...]]  # sql.record parameters of the stored failed events applied again


def _outcomes(
    events: Sequence[PlannedEvent],
    order: Sequence[int],
    first_seen: dict[str, int],
    stored: dict[str, tuple[str, int]],
    changed_by_index: dict[int, int],
) -> _Outcomes:
    """Each event's outcome from what was stored before and the rows its writes changed."""
    results: list[IngestResult | None] = [None] * len(events)
    outcome_of_id: dict[str, Outcome] = {}
    new_rows: list[tuple[Any, ...]] = []
    reapplied: list[tuple[Any, ...]] = []
    for index in order:
        planned = events[index]
        event_id = planned.id
        if planned.dead_letter is not None:
            results[index] = IngestResult(event_id, Outcome.REFUSED, error=planned.dead_letter[3])
            continue
        if first_seen[event_id] != index:  # the same event twice in one batch
            results[index] = IngestResult(event_id, outcome_of_id[event_id], duplicate=True)
            continue
        known = stored.get(event_id)
        if known is not None and known[0] != Outcome.FAILED:
            outcome_of_id[event_id] = Outcome(known[0])
            results[index] = IngestResult(event_id, Outcome(known[0]), duplicate=True)
            continue
        if planned.error is not None:
            outcome = Outcome.FAILED
        else:
            outcome = _outcome_of(changed_by_index[index], planned)
        outcome_of_id[event_id] = outcome
        results[index] = IngestResult(event_id, outcome, error=planned.error)
        processed = _processed_at(outcome, planned)
        if known is None:
            new_rows.append((*planned.row, processed, outcome.value, 1, planned.error))
        else:
            reapplied.append((outcome.value, planned.error, processed, known[1] + 1, event_id))
    return _Outcomes([result for result in results if result is not None], new_rows, reapplied)


def apply_carefully(driver: Any, sql: EventSql, planned: PlannedEvent) -> IngestResult:
    """One event, its writes in a savepoint: a failing write is recorded without undoing the rest of
    the transaction. The event row is stored first, which on PostgreSQL makes a concurrent receiver
    of the same event wait for this transaction instead of applying it too. An event whose own row
    the database refuses is kept as a dead letter instead, with the database's reason."""
    if planned.dead_letter is None:
        driver.execute("SAVEPOINT store_event")
        try:
            result = _apply_in_savepoint(driver, sql, planned)
        except Exception as exc:
            if is_infrastructure_error(exc):
                raise
            driver.execute("ROLLBACK TO SAVEPOINT store_event")
            planned = refused_event(planned, exc)
        driver.execute("RELEASE SAVEPOINT store_event")
    if planned.dead_letter is not None:
        driver.execute(sql.dead_letter, planned.dead_letter)
        result = IngestResult(planned.id, Outcome.REFUSED, error=planned.dead_letter[3])
    if planned.after:
        execute_writes(driver, planned.after)
    return result


def _apply_in_savepoint(driver: Any, sql: EventSql, planned: PlannedEvent) -> IngestResult:
    stored_row = (*planned.row, None, Outcome.FAILED.value, 1, None)
    inserted = driver.execute(sql.store, stored_row).rowcount
    attempts = 1
    if not inserted:
        outcome_text, previous_attempts = stored_outcomes(driver, sql, [planned.id])[planned.id]
        if outcome_text != Outcome.FAILED:
            return IngestResult(planned.id, Outcome(outcome_text), duplicate=True)
        attempts = previous_attempts + 1

    error = planned.error
    outcome = Outcome.FAILED
    if error is None:
        driver.execute("SAVEPOINT apply_event")
        try:
            outcome = _outcome_of(execute_writes(driver, planned.writes), planned)
        except Exception as exc:
            if is_infrastructure_error(exc):
                raise
            driver.execute("ROLLBACK TO SAVEPOINT apply_event")
            error = describe(exc)
        driver.execute("RELEASE SAVEPOINT apply_event")
    driver.execute(sql.record, (outcome.value, error, _processed_at(outcome, planned), attempts, planned.id))
    return IngestResult(planned.id, outcome, error=error)


Transaction = Callable[[], AbstractContextManager[Any]]


def apply_order(events: Sequence[PlannedEvent], keep_order: bool) -> list[int]:
    """Rows are touched in a fixed order (by object, then event) so that concurrent batches on
    PostgreSQL lock in the same order and rarely deadlock; ``keep_order`` applies the events in the
    order given instead (replays of a recording)."""
    if keep_order:
        return list(range(len(events)))
    return sorted(range(len(events)), key=lambda i: (_object_of(events[i]), events[i].id))


def _object_of(planned: PlannedEvent) -> str:
    return (planned.row[OBJECT_ID] or "") if planned.dead_letter is None else ""


def apply_batch(
    transaction: Transaction,
    sql: EventSql,
    events: Sequence[PlannedEvent],
    *,
    keep_order: bool = False,
    ahead: WrittenAhead | None = None,
) -> list[IngestResult]:
    """One transaction (``transaction()`` yields a driver connection and commits on success).

    Tried optimistically first (with the first query written ``ahead`` when given: ``write_ahead`` of
    these events, whose order it keeps); only when a write fails is it rolled back and redone with one
    savepoint per event, so that the failing event is stored as failed and its neighbours applied."""
    order = ahead.order if ahead is not None else apply_order(events, keep_order)
    try:
        try:
            with transaction() as driver:
                return apply_optimistically(driver, sql, events, order, ahead=ahead)
        except StoredBefore:  # (rolled back) the speculative pass wrote for a duplicate: look up first
            with transaction() as driver:
                return apply_optimistically(driver, sql, events, order, speculate=False)
    except RedoCarefully:
        pass
    results: list[IngestResult | None] = [None] * len(events)
    with transaction() as driver:
        for index in order:
            results[index] = apply_carefully(driver, sql, events[index])
    return [result for result in results if result is not None]


def apply_with_recovery(
    transaction: Transaction,
    sql: EventSql,
    events: Sequence[PlannedEvent],
    *,
    keep_order: bool = False,
    ahead: WrittenAhead | None = None,
) -> list[IngestResult | DatabaseUnavailable]:
    """``apply_batch``; a batch hit by a deadlock, a lost connection or anything unforeseen is redone
    one event per transaction, each retried with back-off (for the database) before it is reported
    unavailable, so that whatever one event does, its neighbours are stored and answered."""
    try:
        return list(apply_batch(transaction, sql, events, keep_order=keep_order, ahead=ahead))
    except Exception:
        pass
    results: list[IngestResult | DatabaseUnavailable] = []
    for event in events:
        result = _apply_one_with_retries(transaction, sql, event)
        results.append(result)
        if type(result) is DatabaseUnavailable:  # the database is out: the rest would wait as long
            results.extend([result] * (len(events) - len(results)))
            break
    return results


def _apply_one_with_retries(
    transaction: Transaction, sql: EventSql, event: PlannedEvent
) -> IngestResult | DatabaseUnavailable:
    last: Exception | None = None
    for delay in (0.0, *RETRY_DELAYS):
        if delay:
            time.sleep(delay)
        try:
            return apply_batch(transaction, sql, [event])[0]
        except Exception as exc:
            if not is_infrastructure_error(exc):
                return NotStored(f"event {event.id!r} could not be stored: {describe(exc)}")
            last = exc
    return DatabaseUnavailable(f"database unavailable: {type(last).__name__}")
