"""The one place that owns transactions: store each verified event, apply it, commit.

A batch of events shares one transaction and so one commit (one fsync on SQLite). A batch is first
applied optimistically, in a few multi-row statements and without savepoints; if a handler fails,
that attempt is rolled back and the batch is redone with each event in its own savepoint, so the
failing event is stored as ``failed`` without undoing its neighbours. The commit happens before any
caller is told the outcome.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache

from sqlalchemy import Connection, Dialect, Engine, bindparam, null, select, update
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from app.dispatch import apply_event
from app.driver_sql import PreparedStatement, fetch_all, pinned_connection, session_connection
from app.envelope import Event
from app.handlers.base import Outcome
from app.models import StripeEvent
from app.upsert import dialect_insert, insert_for, table_of

EVENTS = table_of(StripeEvent)
RETRY_DELAYS = (0.05, 0.2, 0.5, 1.0)


class DatabaseUnavailable(Exception):
    """The database could not be reached or kept failing; nothing was committed for the event."""


@dataclass(frozen=True)
class IngestResult:
    event_id: str
    outcome: Outcome
    duplicate: bool = False
    error: str | None = None


def is_infrastructure_error(exc: BaseException) -> bool:
    """Errors of the connection or of concurrency (deadlock, lock timeout), not of the event."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def _now() -> datetime:
    return datetime.now(UTC)


def _event_row(event: Event, received: datetime, outcome: Outcome = Outcome.FAILED) -> dict[str, object]:
    """The stripe_events row; the careful path inserts it as failed and sets the outcome later."""
    return {
        "id": event.id,
        "type": event.type,
        "created": event.created,
        "api_version": event.api_version,
        "livemode": event.livemode,
        "account": event.account,
        "thin": event.thin,
        "object_id": event.object_id,
        "payload": event.raw,
        "received_at": received,
        "processed_at": None if outcome == Outcome.FAILED else received,
        "outcome": outcome.value,
        "attempts": 1,
    }


Apply = Callable[[Session, Event], Outcome]


def store_and_apply(session: Session, event: Event, apply: Apply) -> IngestResult:
    """Inside an open transaction: store ``event`` unless known, apply it unless done. Never commits.

    The careful path: the handler runs in a savepoint, so its failure is recorded without undoing
    the rest of the transaction."""
    inserted = session.execute(
        insert_for(session, EVENTS)
        .values(_event_row(event, _now()))
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(EVENTS.c.id)
    ).first()
    attempts = 1
    if inserted is None:
        # Locks the row on PostgreSQL, so two receivers never re-apply the same failed event at once.
        stored = session.execute(
            select(EVENTS.c.outcome, EVENTS.c.attempts).where(EVENTS.c.id == event.id).with_for_update()
        ).one()
        if stored.outcome != Outcome.FAILED:
            return IngestResult(event.id, Outcome(stored.outcome), duplicate=True)
        attempts = stored.attempts + 1

    error: str | None = None
    try:
        with session.begin_nested():
            outcome = apply(session, event)
    except Exception as exc:
        if is_infrastructure_error(exc):
            raise
        outcome = Outcome.FAILED
        error = "".join(traceback.format_exception_only(exc)).strip()[:4000]
    session.execute(
        update(EVENTS)
        .where(EVENTS.c.id == event.id)
        .values(outcome=outcome.value, error=error, processed_at=_now(), attempts=attempts)
    )
    return IngestResult(event.id, outcome, error=error)


class _RedoCarefully(Exception):
    """The optimistic pass met a failing handler or a concurrent writer: redo the batch carefully."""


_EVENT_COLUMNS = (
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
    "processed_at",
    "outcome",
    "attempts",
)
_LOOKUP_CHUNK = 5000


@lru_cache(maxsize=8)
def _event_statements(dialect: Dialect) -> tuple[PreparedStatement, PreparedStatement]:
    """(store new events, record the new outcome of re-applied failed ones), compiled once."""
    insert = dialect_insert(dialect.name, EVENTS).on_conflict_do_nothing(index_elements=["id"])
    store = PreparedStatement(insert, _EVENT_COLUMNS, dialect)
    record = PreparedStatement(
        update(EVENTS)
        .where(EVENTS.c.id == bindparam("event_id"))
        .values(
            outcome=bindparam("new_outcome"),
            error=null(),
            processed_at=bindparam("processed", type_=EVENTS.c.processed_at.type),
            attempts=bindparam("new_attempts"),
        ),
        ("event_id", "new_outcome", "processed", "new_attempts"),
        dialect,
        values_clause=False,
    )
    return store, record


# One statement text whatever the number of ids: the ids travel as one array parameter.
_KNOWN_EVENTS_SQL = {
    "sqlite": "SELECT id, outcome, attempts FROM stripe_events"
    " WHERE id IN (SELECT value FROM json_each(?)) ORDER BY id",
    # FOR UPDATE: another receiver cannot re-apply the same failed event meanwhile.
    "postgresql": "SELECT id, outcome, attempts FROM stripe_events WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
}


def _stored_outcomes(connection: Connection, ids: list[str]) -> dict[str, tuple[str, int]]:
    """(outcome, attempts) of the events among ``ids`` that are already stored."""
    dialect = connection.dialect.name
    stored: dict[str, tuple[str, int]] = {}
    for start in range(0, len(ids), _LOOKUP_CHUNK):
        chunk = ids[start : start + _LOOKUP_CHUNK]
        param = json.dumps(chunk) if dialect == "sqlite" else chunk
        for event_id, outcome, attempts in fetch_all(connection, _KNOWN_EVENTS_SQL[dialect], (param,)):
            stored[event_id] = (outcome, attempts)
    return stored


def store_and_apply_batch(
    session: Session, events: Sequence[Event], order: Sequence[int], apply: Apply
) -> list[IngestResult]:
    """The optimistic path: the whole batch without savepoints, in a handful of statements.

    1. One SELECT (per 500 ids) finds the events already stored, and locks them on PostgreSQL
       (SQLite writers hold the database lock from BEGIN IMMEDIATE on).
    2. Handlers run in ``order`` for new events and for stored failed ones.
    3. One executemany INSERT .. ON CONFLICT DO NOTHING stores the new events with their outcome,
       and one executemany UPDATE records the outcome of the re-applied ones.

    If a handler raises, or if the INSERT stores fewer rows than expected (another receiver stored
    one of these events after step 1), _RedoCarefully propagates and the caller rolls the whole
    transaction back: nothing of this attempt is kept.
    """
    connection = session_connection(session)
    store, record = _event_statements(connection.dialect)
    first_seen: dict[str, int] = {}
    for index in order:
        first_seen.setdefault(events[index].id, index)
    stored = _stored_outcomes(connection, sorted(first_seen))

    results: list[IngestResult | None] = [None] * len(events)
    outcome_of_id: dict[str, Outcome] = {}
    new_rows: list[dict[str, object]] = []
    reapplied: list[dict[str, object]] = []
    received = _now()
    for index in order:
        event = events[index]
        if first_seen[event.id] != index:  # the same event twice in one batch
            results[index] = IngestResult(event.id, outcome_of_id[event.id], duplicate=True)
            continue
        known = stored.get(event.id)
        if known is not None and known[0] != Outcome.FAILED:
            outcome_of_id[event.id] = Outcome(known[0])
            results[index] = IngestResult(event.id, Outcome(known[0]), duplicate=True)
            continue
        try:
            outcome = apply(session, event)
        except Exception as exc:
            if is_infrastructure_error(exc):
                raise
            raise _RedoCarefully(event.id) from exc
        outcome_of_id[event.id] = outcome
        results[index] = IngestResult(event.id, outcome)
        if known is None:
            new_rows.append(_event_row(event, received, outcome))
        else:
            reapplied.append(
                {
                    "event_id": event.id,
                    "new_outcome": outcome.value,
                    "processed": received,
                    "new_attempts": known[1] + 1,
                }
            )
    if store.executemany(connection, new_rows) != len(new_rows):
        raise _RedoCarefully("an event of this batch was stored concurrently")
    record.executemany(connection, reapplied)
    return [result for result in results if result is not None]


class EventStore:
    """Stores and applies events against one engine; safe to share between threads."""

    def __init__(self, engine: Engine, apply: Callable[[Session, Event], Outcome] = apply_event) -> None:
        self.engine = engine
        self.apply = apply

    def ingest_batch(self, events: Sequence[Event], *, keep_order: bool = False) -> list[IngestResult]:
        """One transaction, one commit. Rows are touched in a fixed order (by object, then event) so
        that concurrent batches on PostgreSQL lock in the same order and rarely deadlock;
        ``keep_order=True`` applies the events in the order given instead (replays of a recording).

        The batch is first tried without savepoints (store_and_apply_batch). Only when a handler
        fails is it rolled back and redone with one savepoint per event, so that the failing event
        is stored as failed and its neighbours are applied."""
        if keep_order:
            order = list(range(len(events)))
        else:
            order = sorted(range(len(events)), key=lambda i: (events[i].object_id or "", events[i].id))
        try:
            with Session(self.engine) as session, session.begin(), pinned_connection(session):
                return store_and_apply_batch(session, events, order, self.apply)
        except _RedoCarefully:
            pass
        results: list[IngestResult | None] = [None] * len(events)
        with Session(self.engine) as session, session.begin(), pinned_connection(session):
            for index in order:
                results[index] = store_and_apply(session, events[index], self.apply)
        return [result for result in results if result is not None]

    def ingest(
        self, events: Sequence[Event], *, keep_order: bool = False
    ) -> list[IngestResult | DatabaseUnavailable]:
        """Ingest with recovery: a batch hit by a deadlock or a lost connection is redone one event
        per transaction, each retried with back-off before it is reported unavailable."""
        try:
            return list(self.ingest_batch(events, keep_order=keep_order))
        except Exception as exc:
            if not is_infrastructure_error(exc):
                raise
        return [self._ingest_one_with_retries(event) for event in events]

    def _ingest_one_with_retries(self, event: Event) -> IngestResult | DatabaseUnavailable:
        last: Exception | None = None
        for delay in (0.0, *RETRY_DELAYS):
            if delay:
                time.sleep(delay)
            try:
                return self.ingest_batch([event])[0]
            except Exception as exc:
                if not is_infrastructure_error(exc):
                    raise
                last = exc
        return DatabaseUnavailable(f"database unavailable: {type(last).__name__}")
