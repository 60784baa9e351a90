"""The one place that owns transactions: store each verified event, apply it, commit.

A batch of events shares one transaction and so one commit (one fsync on SQLite). Each event is
applied inside its own savepoint, so a handler that fails leaves its event stored as ``failed``
without undoing its neighbours. The commit happens before any caller is told the outcome.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, select, update
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from app.dispatch import apply_event
from app.envelope import Event
from app.handlers.base import Outcome
from app.models import StripeEvent
from app.upsert import insert_for, table_of

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


def store_and_apply(session: Session, event: Event, apply: Callable[[Session, Event], Outcome]) -> IngestResult:
    """Inside an open transaction: store ``event`` unless known, apply it unless done. Never commits."""
    received = _now()
    inserted = session.execute(
        insert_for(session, EVENTS)
        .values(
            id=event.id,
            type=event.type,
            created=event.created,
            api_version=event.api_version,
            livemode=event.livemode,
            account=event.account,
            thin=event.thin,
            object_id=event.object_id,
            payload=event.raw,
            received_at=received,
            outcome=Outcome.FAILED.value,  # replaced below in the same transaction
            attempts=1,
        )
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


class EventStore:
    """Stores and applies events against one engine; safe to share between threads."""

    def __init__(
        self, engine: Engine, apply: Callable[[Session, Event], Outcome] = apply_event
    ) -> None:
        self.engine = engine
        self.apply = apply

    def ingest_batch(self, events: Sequence[Event]) -> list[IngestResult]:
        """One transaction, one commit. Rows are touched in a fixed order (by object, then event) so
        that concurrent batches on PostgreSQL lock in the same order and rarely deadlock."""
        order = sorted(range(len(events)), key=lambda i: (events[i].object_id or "", events[i].id))
        results: list[IngestResult | None] = [None] * len(events)
        with Session(self.engine) as session, session.begin():
            for index in order:
                results[index] = store_and_apply(session, events[index], self.apply)
        return [result for result in results if result is not None]

    def ingest(self, events: Sequence[Event]) -> list[IngestResult | DatabaseUnavailable]:
        """Ingest with recovery: a batch hit by a deadlock or a lost connection is redone one event
        per transaction, each retried with back-off before it is reported unavailable."""
        try:
            return list(self.ingest_batch(events))
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
