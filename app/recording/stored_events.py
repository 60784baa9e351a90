"""Read the stored events (stripe_events): filter, stream for export, look one up, re-apply failed ones."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Engine, Select, func, or_, select

from app.db.models import DeadLetter, StripeEvent, dead_letter_summary
from app.ingest.apply import DatabaseUnavailable, IngestResult
from app.ingest.store import EventStore
from app.mirror.envelope import EnvelopeError, Event, parse_event
from app.mirror.outcome import Outcome
from app.mirror.upsert import table_of

EVENTS = table_of(StripeEvent)
LETTERS = table_of(DeadLetter)
OUTCOMES = tuple(outcome.value for outcome in Outcome)
RETRY_BATCH = 200


@dataclass(frozen=True)
class EventFilter:
    since: int | None = None  # created >= since
    until: int | None = None  # created < until
    types: tuple[str, ...] = ()  # exact types, or prefixes ending in '*' ("invoice.*")
    statuses: tuple[str, ...] = ()  # outcomes

    def apply(self, query: Select[Any]) -> Select[Any]:
        if self.since is not None:
            query = query.where(EVENTS.c.created >= self.since)
        if self.until is not None:
            query = query.where(EVENTS.c.created < self.until)
        if self.types:
            query = query.where(types_match(EVENTS.c.type, self.types))
        if self.statuses:
            query = query.where(EVENTS.c.outcome.in_(self.statuses))
        return query


def types_match(column: Any, types: Sequence[str]) -> ColumnElement[bool]:
    """``column`` is one of ``types``: exact names, or prefixes ending in '*'."""
    exact = [t for t in types if not t.endswith("*")]
    prefixes = [t[:-1] for t in types if t.endswith("*")]
    conditions: list[ColumnElement[bool]] = [column.in_(exact)] if exact else []
    conditions += [column.startswith(prefix, autoescape=True) for prefix in prefixes]
    return or_(*conditions)


def single_line(payload: str) -> tuple[str, bool]:
    """The payload as one JSONL line, and whether it had to be changed.

    Valid JSON can only hold a raw CR or LF as whitespace between tokens (inside strings they must
    be escaped), so removing them leaves the same JSON value. Stripe's bodies are single-line, so
    this only touches events stored from pretty-printed files (e.g. a replayed ``*.json`` fixture).
    """
    if "\n" not in payload and "\r" not in payload:
        return payload, False
    return payload.replace("\r", "").replace("\n", ""), True


def iter_payloads(engine: Engine, where: EventFilter, chunk: int = 1000) -> Iterator[str]:
    """Stored payloads, oldest first (created, then id), streamed from the database."""
    query = where.apply(select(EVENTS.c.payload)).order_by(EVENTS.c.created, EVENTS.c.id)
    with engine.connect() as connection:
        # yield_per streams (a server-side cursor on PostgreSQL): memory stays flat on any size.
        result = connection.execution_options(yield_per=chunk).execute(query)
        for (payload,) in result:
            yield payload


def list_events(engine: Engine, where: EventFilter, limit: int) -> list[Any]:
    query = (
        where.apply(
            select(
                EVENTS.c.id,
                EVENTS.c.type,
                EVENTS.c.created,
                EVENTS.c.outcome,
                EVENTS.c.attempts,
                EVENTS.c.error,
                EVENTS.c.object_id,
            )
        )
        .order_by(EVENTS.c.created.desc(), EVENTS.c.id.desc())
        .limit(limit)
    )
    with engine.connect() as connection:
        return list(connection.execute(query))


def list_dead_letters(engine: Engine, where: EventFilter, limit: int) -> list[Any]:
    """The refused deliveries (dead_letters), newest first; ``since``/``until`` apply to their
    receipt (they have no trustworthy ``created``), ``types`` to the type they claim."""
    query = select(*dead_letter_summary())
    if where.since is not None:
        query = query.where(LETTERS.c.received_at >= datetime.fromtimestamp(where.since, UTC))
    if where.until is not None:
        query = query.where(LETTERS.c.received_at < datetime.fromtimestamp(where.until, UTC))
    if where.types:
        query = query.where(types_match(LETTERS.c.event_type, where.types))
    with engine.connect() as connection:
        return list(connection.execute(query.order_by(LETTERS.c.id.desc()).limit(limit)))


def count_dead_letters(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(LETTERS)).scalar_one())


def get_event(engine: Engine, event_id: str) -> Any | None:
    with engine.connect() as connection:
        return connection.execute(select(EVENTS).where(EVENTS.c.id == event_id)).first()


@dataclass(frozen=True)
class RetryResult:
    event_id: str
    outcome: str  # an Outcome, or "not found" / "unreadable" / "unavailable"
    duplicate: bool = False  # the event was not failed: nothing was done
    error: str | None = None


def _payloads_of(engine: Engine, ids: Sequence[str]) -> dict[str, str]:
    with engine.connect() as connection:
        rows = connection.execute(select(EVENTS.c.id, EVENTS.c.payload).where(EVENTS.c.id.in_(list(ids))))
        return {row.id: row.payload for row in rows}


def retry_events(store: EventStore, read_engine: Engine, ids: Sequence[str]) -> list[RetryResult]:
    """Ingest the stored events again: a failed one is re-applied, any other is left as it is."""
    results: list[RetryResult] = []
    for start in range(0, len(ids), RETRY_BATCH):
        chunk = list(ids[start : start + RETRY_BATCH])
        payloads = _payloads_of(read_engine, chunk)
        events: list[Event] = []
        for event_id in chunk:
            payload = payloads.get(event_id)
            if payload is None:
                results.append(RetryResult(event_id, "not found"))
                continue
            try:
                events.append(parse_event(payload.encode("utf-8")))
            except EnvelopeError as exc:
                results.append(RetryResult(event_id, "unreadable", error=exc.message))
        for event, outcome in zip(events, store.ingest(events, keep_order=True), strict=True):
            results.append(_retry_result(event.id, outcome))
    return results


def _retry_result(event_id: str, outcome: IngestResult | DatabaseUnavailable) -> RetryResult:
    if isinstance(outcome, DatabaseUnavailable):
        return RetryResult(event_id, "unavailable", error=str(outcome))
    return RetryResult(event_id, outcome.outcome.value, duplicate=outcome.duplicate, error=outcome.error)


def failed_event_ids(
    engine: Engine, where: EventFilter, after: str = "", limit: int = RETRY_BATCH
) -> list[str]:
    """One page of failed event ids after ``after`` (keyset paging: retries may fail again)."""
    query = (
        where.apply(select(EVENTS.c.id))
        .where(EVENTS.c.outcome == Outcome.FAILED.value, EVENTS.c.id > after)
        .order_by(EVENTS.c.id)
        .limit(limit)
    )
    with engine.connect() as connection:
        return list(connection.execute(query).scalars())
