"""The one place that owns transactions in a receiver: plan events, then store and apply them in one
transaction per batch and commit, before any caller is told an outcome.

Planning (app.dispatch) happens before the transaction opens, so locks are held only while rows are
written; storing and applying is app.apply, run on the DBAPI connection of a SQLAlchemy session.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Dialect, Engine
from sqlalchemy.orm import Session

from app.apply import (
    DatabaseUnavailable,
    EventSql,
    IngestResult,
    PlannedEvent,
    apply_batch,
    apply_with_recovery,
    event_sql,
    is_infrastructure_error,
)
from app.dispatch import Apply, apply_event, plan_event
from app.driver_sql import driver_connection
from app.envelope import Event
from app.models import StripeEvent
from app.upsert import table_of

__all__ = ["DatabaseUnavailable", "EventStore", "IngestResult", "is_infrastructure_error"]


@lru_cache(maxsize=8)
def statements_for(dialect: Dialect) -> EventSql:
    return event_sql(dialect.name)


def received_now(dialect: Dialect) -> Any:
    """The current time as the driver stores stripe_events.received_at (a string on SQLite)."""
    column_type = table_of(StripeEvent).c.received_at.type
    to_driver = column_type.dialect_impl(dialect).bind_processor(dialect)
    now = datetime.now(UTC)
    return to_driver(now) if to_driver is not None else now


class EventStore:
    """Stores and applies events against one engine; safe to share between threads."""

    def __init__(self, engine: Engine, apply: Apply = apply_event) -> None:
        self.engine = engine
        self.apply = apply

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        with Session(self.engine) as session, session.begin():
            yield driver_connection(session)

    def plan(self, events: Sequence[Event]) -> list[PlannedEvent]:
        dialect = self.engine.dialect
        return [plan_event(event, dialect, self.apply) for event in events]

    def ingest_batch(self, events: Sequence[Event], *, keep_order: bool = False) -> list[IngestResult]:
        """One transaction, one commit (app.apply.apply_batch); a database error propagates."""
        dialect = self.engine.dialect
        return apply_batch(
            self._transaction,
            statements_for(dialect),
            self.plan(events),
            received_now(dialect),
            keep_order=keep_order,
        )

    def ingest(
        self, events: Sequence[Event], *, keep_order: bool = False
    ) -> list[IngestResult | DatabaseUnavailable]:
        """Ingest with recovery: a batch hit by a deadlock or a lost connection is redone one event
        per transaction, each retried with back-off before it is reported unavailable."""
        dialect = self.engine.dialect
        return apply_with_recovery(
            self._transaction,
            statements_for(dialect),
            self.plan(events),
            received_now(dialect),
            keep_order=keep_order,
        )
