"""The one place that owns transactions in a receiver: plan events, then store and apply them in one
transaction per batch and commit, before any caller is told an outcome.

Planning (app.ingest.plan) happens before the transaction opens, so locks are held only while rows
are written; storing and applying is app.ingest.apply, run on the DBAPI connection of a SQLAlchemy
session (SQLite) or on a pooled psycopg connection without a session (PostgreSQL).
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime
from functools import lru_cache, partial
from typing import Any, Protocol

from sqlalchemy import Dialect, Engine
from sqlalchemy.orm import Session

from app.db.engine import HeldConnection, mark_connections_suspect, sqlite_path
from app.db.models import StripeEvent
from app.ingest.apply import (
    DatabaseUnavailable,
    EventSql,
    IngestResult,
    PlannedEvent,
    apply_on_loop,
    apply_with_recovery,
    event_sql,
    write_ahead,
)
from app.ingest.plan import plan_event
from app.ingest.writer_process import SqliteWriterProcess, WriterProcessError
from app.mirror.dispatch import Apply, apply_event
from app.mirror.driver_sql import driver_connection
from app.mirror.envelope import Event
from app.mirror.upsert import table_of

Results = list[IngestResult | DatabaseUnavailable]
# Planned events a replay sends ahead of the answers it has (WriterProcessStore.ingest_in_order).
IN_FLIGHT_EVENTS = 4000
# The same on PostgreSQL, where they wait with their first query written: 1,000 did 6,560-7,024
# events/s in 117-120 MiB, 4,000 6,084-6,496 in 155-159 (bench/README.md, fifth session).
POSTGRES_IN_FLIGHT_EVENTS = 1000


class Ingests(Protocol):
    """What the group committer needs: EventStore, or WriterProcessStore on SQLite."""

    def ingest(self, events: Sequence[Event | PlannedEvent], *, keep_order: bool = False) -> Results: ...

    def holding_a_connection(self) -> AbstractContextManager[None]:
        """Meanwhile this thread's batches share one connection (a writer thread's whole life)."""
        ...

    @property
    def writes_on_loop(self) -> bool:
        """Whether deliveries are planned on the event loop and offered to ``ingest_on_loop`` first."""
        ...

    def plan(self, events: Sequence[Event | PlannedEvent]) -> list[PlannedEvent]: ...

    async def ingest_on_loop(self, events: Sequence[PlannedEvent]) -> list[IngestResult] | None:
        """Store a batch from the running event loop, without waiting on it; None (nothing of it
        stored) when a writer thread must store it instead."""
        ...

    def release_loop_connection(self) -> None:
        """Give back the connection ``ingest_on_loop`` keeps, if any."""
        ...

    @property
    def commits(self) -> int: ...

    @property
    def dialect(self) -> Dialect: ...


@lru_cache(maxsize=8)
def statements_for(dialect: Dialect) -> EventSql:
    return event_sql(dialect.name)


@lru_cache(maxsize=8)
def _received_at_to_driver(dialect: Dialect) -> Callable[[Any], Any] | None:
    column_type = table_of(StripeEvent).c.received_at.type
    return column_type.dialect_impl(dialect).bind_processor(dialect)


def received_now(dialect: Dialect) -> Any:
    """The current time as the driver stores stripe_events.received_at (a string on SQLite)."""
    to_driver = _received_at_to_driver(dialect)
    now = datetime.now(UTC)
    return to_driver(now) if to_driver is not None else now


def plan_all(events: Sequence[Event | PlannedEvent], dialect: Dialect, apply: Apply) -> list[PlannedEvent]:
    """Events planned for ingest; what is already planned (a refused delivery's dead letter) as is."""
    received = received_now(dialect)
    return [
        planned if isinstance(planned, PlannedEvent) else plan_event(planned, dialect, received, apply)
        for planned in events
    ]


def _lost(driver: Any, exc: BaseException) -> bool:
    """Whether ``driver`` (a psycopg connection) can no longer be used after ``exc``."""
    return bool(driver.closed or driver.broken or getattr(exc, "connection_invalidated", False))


class EventStore:
    """Stores and applies events against one engine; safe to share between threads."""

    def __init__(self, engine: Engine, apply: Apply = apply_event) -> None:
        self.engine = engine
        self.dialect = engine.dialect
        self.apply = apply
        self.commits = 0  # transactions committed (group commit makes them far fewer than events)
        self._commits_lock = threading.Lock()  # several writer threads may commit at once
        self._held = threading.local()  # .connection: this thread's HeldConnection, if it holds one
        self._loop_held: HeldConnection | None = None  # the event loop's connection (ingest_on_loop)
        self._loop_readying = False  # a thread is taking or pinging it
        self._loop_released = False  # given back (the receiver stops): a readying thread gives it back too

    def _transaction(self) -> AbstractContextManager[Any]:
        if self.dialect.name == "postgresql":
            return self._driver_transaction()
        return self._session_transaction()

    @contextmanager
    def _session_transaction(self) -> Iterator[Any]:
        with Session(self.engine) as session, session.begin():
            yield driver_connection(session)
        self._committed()

    @contextmanager
    def _driver_transaction(self) -> Iterator[Any]:
        """A transaction on a pooled psycopg connection, without a SQLAlchemy session: each batch of a
        receiver under load took a session, a connection and a ping (app.db.engine pings only the
        connections not used recently). Committed on success, rolled back otherwise; a connection
        that fails is thrown away and the others are pinged before their next use."""
        held: HeldConnection | None = getattr(self._held, "connection", None)
        pooled = self.engine.raw_connection() if held is None else held.take()
        driver: Any = pooled.driver_connection
        usable = False
        try:
            yield driver
            driver.commit()  # nothing left to commit when the apply sent its own COMMIT
            usable = True
        except BaseException as exc:
            if _lost(driver, exc):
                pooled.invalidate()
                mark_connections_suspect(self.engine)
            else:
                try:
                    driver.rollback()
                    usable = True
                except Exception:
                    pooled.invalidate()
                    mark_connections_suspect(self.engine)
            raise
        finally:
            if held is None:
                pooled.close()  # back to the pool (an invalidated one reconnects when next taken)
            elif usable:
                held.worked()
            else:
                held.release()
        self._committed()

    def _committed(self) -> None:
        with self._commits_lock:
            self.commits += 1

    @contextmanager
    def holding_a_connection(self) -> Iterator[None]:
        """This thread's transactions on PostgreSQL share one pooled connection until the block ends,
        instead of taking one from the pool for each (a receiver's writer thread, batch after batch)."""
        if self.dialect.name != "postgresql" or getattr(self._held, "connection", None) is not None:
            yield
            return
        held = self._held.connection = HeldConnection(self.engine)
        try:
            yield
        finally:
            del self._held.connection
            held.release()

    @property
    def writes_on_loop(self) -> bool:
        return self.dialect.name == "postgresql"

    async def ingest_on_loop(self, events: Sequence[PlannedEvent]) -> list[IngestResult] | None:
        """A batch stored from the running event loop on a connection of its own (``apply_on_loop``:
        a lone event in one round trip, else two), its answers awaited while the loop serves other
        requests and plans the next batch: no hand-over to a writer thread and back, and PostgreSQL
        writes one batch while the loop plans the next (bench/README.md, ninth and tenth sessions).

        None, for a writer thread's careful path, with nothing of the batch committed: not
        PostgreSQL; the loop's connection not known good as of RECENT_SECONDS ago (a thread pings or
        replaces it meanwhile: no I/O waits on the loop); a batch too large for that path; or a
        failed attempt (an event stored before, a write refused, a deadlock, the connection lost:
        that connection is dropped, and PostgreSQL rolls back what it had begun)."""
        if not self.writes_on_loop:
            return None
        self._loop_released = False  # (in use again after release_loop_connection)
        held = self._loop_held
        if held is None or self._loop_readying or (pooled := held.usable_now()) is None:
            self._ready_loop_connection_soon()
            return None
        driver = pooled.driver_connection
        try:
            results = await apply_on_loop(driver, statements_for(self.dialect), events)
        except BaseException as exc:
            held.discard(lost=_lost(driver, exc))
            if isinstance(exc, Exception):
                return None
            raise
        if results is not None:
            held.worked()
            self._committed()
        return results

    def _ready_loop_connection_soon(self) -> None:
        """Take (or ping) the loop's connection in a thread of the loop's executor, one at a time."""
        if self._loop_readying:
            return
        self._loop_readying = True
        asyncio.get_running_loop().run_in_executor(None, self.ready_loop_connection)

    def ready_loop_connection(self) -> None:
        """(In a thread: it may ping or connect.) Make the connection ``ingest_on_loop`` uses ready."""
        try:
            held = self._loop_held or HeldConnection(self.engine)
            held.take()  # pings it, or connects, as a writer thread's connection would be
            held.worked()
            self._loop_held = held
        except Exception:  # the database is away: deliveries go to the writer threads, which say so
            pass
        finally:
            self._loop_readying = False
        if self._loop_released:  # the receiver stopped meanwhile
            self.release_loop_connection()

    def release_loop_connection(self) -> None:
        self._loop_released = True
        held, self._loop_held = self._loop_held, None
        if held is not None:
            held.release()

    def plan(self, events: Sequence[Event | PlannedEvent]) -> list[PlannedEvent]:
        return plan_all(events, self.engine.dialect, self.apply)

    def ingest(
        self, events: Sequence[Event | PlannedEvent], *, keep_order: bool = False
    ) -> list[IngestResult | DatabaseUnavailable]:
        """Ingest with recovery: a batch hit by a deadlock or a lost connection is redone one event
        per transaction, each retried with back-off before it is reported unavailable."""
        sql = statements_for(self.engine.dialect)
        return apply_with_recovery(self._transaction, sql, self.plan(events), keep_order=keep_order)

    def ingest_in_order(self, batches: Iterable[Sequence[Event]]) -> Iterator[Results]:
        """Each batch in its own transaction, its events applied in the order given (a replay)."""
        return self.ingest_planned_in_order(self.plan(events) for events in batches)

    def ingest_planned_in_order(
        self, batches: Iterable[Sequence[PlannedEvent]], *, in_flight_events: int | None = None
    ) -> Iterator[Results]:
        """``ingest_in_order`` for events already planned (their ``after`` writes set by the caller).

        On PostgreSQL one writer thread commits the batches, in order, one transaction each, while
        this thread plans the next ones and writes their first query (``write_ahead``): the
        database's time and this process's overlap (a replay of 20,000 events: bench/README.md).
        Up to ``in_flight_events`` (POSTGRES_IN_FLIGHT_EVENTS) wait for their answers. Elsewhere
        each batch is committed before the next is read."""
        sql = statements_for(self.engine.dialect)
        if self.dialect.name != "postgresql":
            for planned in batches:
                yield apply_with_recovery(self._transaction, sql, planned, keep_order=True)
            return
        writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="billing-mirror-writer")
        try:
            write = partial(apply_with_recovery, self._transaction, sql, keep_order=True)
            sent = (
                (writer.submit(write, planned, ahead=write_ahead(planned, keep_order=True)), len(planned))
                for planned in batches
            )
            limit = POSTGRES_IN_FLIGHT_EVENTS if in_flight_events is None else in_flight_events
            yield from answers_in_order(sent, limit, lambda future, _count: future.result())
        finally:  # a caller that stops early (or an error) leaves the batches not yet started unwritten
            writer.shutdown(wait=True, cancel_futures=True)


def answers_in_order(
    sent: Iterable[tuple[Future[Results], int]],
    in_flight_events: int | None,
    answer: Callable[[Future[Results], int], Results],
) -> Iterator[Results]:
    """The answers of batches being written (each a future and its number of events), in the order
    sent; more are sent until more than ``in_flight_events`` (IN_FLIGHT_EVENTS) wait, and at least
    one always does, so that the writer never waits for the next batch to be planned."""
    limit = IN_FLIGHT_EVENTS if in_flight_events is None else in_flight_events
    in_flight: deque[tuple[Future[Results], int]] = deque()
    waiting = 0
    for future, count in sent:
        in_flight.append((future, count))
        waiting += count
        while len(in_flight) > 1 and waiting > limit:
            oldest, oldest_count = in_flight.popleft()
            waiting -= oldest_count
            yield answer(oldest, oldest_count)
    while in_flight:
        yield answer(*in_flight.popleft())


class WriterProcessStore:
    """EventStore's interface, with the writing done by a SqliteWriterProcess on another core.

    This process plans (decoding already happened); the child stores and applies each batch with the
    same code (app.ingest.apply) and commits. Batches from several threads are pipelined: one is written
    while the next is planned."""

    def __init__(self, engine: Engine, writer: SqliteWriterProcess, apply: Apply = apply_event) -> None:
        self.dialect = engine.dialect
        self.writer = writer
        self.apply = apply

    def plan(self, events: Sequence[Event | PlannedEvent]) -> list[PlannedEvent]:
        return plan_all(events, self.dialect, self.apply)

    def _submit(self, events: Sequence[Event | PlannedEvent], keep_order: bool) -> Future[Results]:
        return self.writer.submit(self.plan(events), keep_order=keep_order)

    def _results(self, future: Future[Results], count: int) -> Results:
        """The outcomes of a batch; if the writer process died meanwhile, it is restarted and the
        batch is reported unavailable (a receiver answers 503, Stripe delivers again)."""
        try:
            return future.result()
        except WriterProcessError as exc:
            self.writer.restart()
            return [DatabaseUnavailable(str(exc))] * count

    def ingest(self, events: Sequence[Event | PlannedEvent], *, keep_order: bool = False) -> Results:
        return self._results(self._submit(events, keep_order), len(events))

    def holding_a_connection(self) -> AbstractContextManager[None]:
        return nullcontext()  # the writer process holds its own

    @property
    def writes_on_loop(self) -> bool:
        return False  # the writer process writes every batch

    async def ingest_on_loop(self, events: Sequence[PlannedEvent]) -> list[IngestResult] | None:
        return None

    def release_loop_connection(self) -> None:
        pass

    def ingest_in_order(self, batches: Iterable[Sequence[Event]]) -> Iterator[Results]:
        """Batches are written while the next ones are planned. Up to IN_FLIGHT_EVENTS wait for
        their answers, so that this process never stops planning while the child syncs the WAL
        of a commit; the child merges the ones queued behind its transaction into the next."""
        return self.ingest_planned_in_order(self.plan(events) for events in batches)

    def ingest_planned_in_order(
        self, batches: Iterable[Sequence[PlannedEvent]], *, in_flight_events: int | None = None
    ) -> Iterator[Results]:
        """``ingest_in_order`` for events already planned (their ``after`` writes set by the caller);
        ``in_flight_events`` (IN_FLIGHT_EVENTS by default) bounds how many wait for their answers."""
        sent = ((self.writer.submit(planned, keep_order=True), len(planned)) for planned in batches)
        return answers_in_order(sent, in_flight_events, self._results)


@contextmanager
def event_store_for(engine: Engine, database_url: str) -> Iterator[EventStore | WriterProcessStore]:
    """The store a replay writes through. On a SQLite file: a WriterProcessStore, whose writer
    process is started here and stopped (after finishing what it was sent) on exit. Otherwise
    (PostgreSQL, which writes in its own processes, or an in-memory SQLite database that only this
    process can open): an EventStore. (A receiver makes the same choice in app.main, with the
    event-loop SqliteCommitter on a SQLite file.)"""
    path = sqlite_path(database_url)
    if path is None:
        yield EventStore(engine)
        return
    with SqliteWriterProcess(path) as writer:
        yield WriterProcessStore(engine, writer)
