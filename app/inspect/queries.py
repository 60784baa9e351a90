"""What the inspector's pages show, read from the database (never written here): events with filters
and keyset paging, one object's rows and history, failed events, dead letters, counts, lag and sync."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

from sqlalchemy import Column, ColumnElement, Connection, Table, and_, case, func, or_, select, text
from sqlmodel import SQLModel

from app.db.models import (
    BillingAlert,
    BillingAlertTrigger,
    BillingMeter,
    BillingMeterErrorReport,
    DeadLetter,
    Invoice,
    InvoiceItem,
    InvoiceItemInvoice,
    InvoiceLineItem,
    InvoiceLineSet,
    InvoicePayment,
    InvoiceRenderingTemplate,
    StripeEvent,
    SyncState,
    SyncWindow,
    dead_letter_summary,
)
from app.ingest.retrier import next_retry_at
from app.inspect.diff import Diff, diff, snapshot_of
from app.json_text import json_value
from app.mirror.envelope import INT64  # a bound past it is refused, not sent
from app.mirror.outcome import Outcome
from app.mirror.upsert import table_of

EVENTS = table_of(StripeEvent)
LETTERS = table_of(DeadLetter)
TRIGGERS = table_of(BillingAlertTrigger)
STATE = table_of(SyncState)
WINDOWS = table_of(SyncWindow)
# The mirrored tables whose rows are objects with a Stripe id, in the order an id is looked up.
OBJECT_TABLES: tuple[Table, ...] = tuple(
    table_of(model)
    for model in (
        Invoice,
        InvoiceItem,
        InvoicePayment,
        InvoiceLineItem,
        BillingMeter,
        BillingAlert,
        InvoiceRenderingTemplate,
    )
)
OUTCOMES = tuple(outcome.value for outcome in Outcome if outcome != Outcome.REFUSED)
PAGE_SIZE = 50
MAX_HISTORY = 500  # events shown on an object's page (the newest ones)
RELATED_ROWS = 100
EXACT_COUNT_BELOW = 1_000_000  # PostgreSQL: larger tables show the planner's estimate
EVENT_COLUMNS = (
    EVENTS.c.id,
    EVENTS.c.type,
    EVENTS.c.created,
    EVENTS.c.outcome,
    EVENTS.c.attempts,
    EVENTS.c.error,
    EVENTS.c.object_id,
    EVENTS.c.source,
    EVENTS.c.account,
    EVENTS.c.livemode,
    EVENTS.c.received_at,
)


# ---- events: filters and keyset paging, newest first ------------------------------------------


@dataclass(frozen=True)
class EventFilters:
    type: str | None = None  # an exact type, or a prefix ending in '*' ("invoice.*")
    outcome: str | None = None
    object_id: str | None = None
    since: int | None = None  # created >= since
    until: int | None = None  # created < until

    def conditions(self) -> list[ColumnElement[bool]]:
        found: list[ColumnElement[bool]] = []
        if self.type:
            if self.type.endswith("*"):
                found.append(EVENTS.c.type.startswith(self.type[:-1], autoescape=True))
            else:
                found.append(EVENTS.c.type == self.type)
        if self.outcome:
            found.append(EVENTS.c.outcome == self.outcome)
        if self.object_id:
            found.append(EVENTS.c.object_id == self.object_id)
        if self.since is not None:
            found.append(EVENTS.c.created >= self.since)
        if self.until is not None:
            found.append(EVENTS.c.created < self.until)
        return found


@dataclass(frozen=True)
class Cursor:
    """A position in the newest-first order: (created, id) of an event."""

    created: int
    id: str

    def text(self) -> str:
        return f"{self.created}:{self.id}"

    @staticmethod
    def parse(value: str) -> Cursor:
        created, colon, event_id = value.partition(":")
        if not colon or not event_id or not created.lstrip("-").isdigit() or not created.isascii():
            raise ValueError(f"{value!r} is not a page cursor")
        if int(created) not in INT64:
            raise ValueError(f"{value!r} is not a page cursor: its time is past 64 bits")
        return Cursor(int(created), event_id)


@dataclass(frozen=True)
class Page:
    rows: list[Any]
    older: Cursor | None  # the cursor of the next, older page, when there is one
    newer: Cursor | None  # the cursor of the previous, newer page, when there is one


def events_page(
    connection: Connection,
    filters: EventFilters,
    *,
    older_than: Cursor | None = None,
    newer_than: Cursor | None = None,
    limit: int = PAGE_SIZE,
) -> Page:
    """One page of events, newest first: the first, the one after ``older_than``, or the one before
    ``newer_than``; ordered by (created, id) so that events of one second never skip or repeat."""
    created, event_id = EVENTS.c.created, EVENTS.c.id
    query = select(*EVENT_COLUMNS).where(*filters.conditions())
    if newer_than is not None:
        query = query.where(
            or_(created > newer_than.created, and_(created == newer_than.created, event_id > newer_than.id))
        )
        found = list(connection.execute(query.order_by(created, event_id).limit(limit + 1)))
        more_newer = len(found) > limit
        rows = list(reversed(found[:limit]))
        return Page(rows, _cursor(rows[-1]) if rows else None, _cursor(rows[0]) if more_newer else None)
    if older_than is not None:
        query = query.where(
            or_(created < older_than.created, and_(created == older_than.created, event_id < older_than.id))
        )
    found = list(connection.execute(query.order_by(created.desc(), event_id.desc()).limit(limit + 1)))
    rows = found[:limit]
    older = _cursor(rows[-1]) if len(found) > limit else None
    newer = _cursor(rows[0]) if older_than is not None and rows else None
    return Page(rows, older, newer)


def _cursor(row: Any) -> Cursor:
    return Cursor(row.created, row.id)


def event_row(connection: Connection, event_id: str) -> Any | None:
    return connection.execute(select(EVENTS).where(EVENTS.c.id == event_id)).first()


def retry_due_at(row: Any) -> int | None:
    """When the receiver's own retrier applies a failed event again (unix seconds)."""
    if row.outcome != Outcome.FAILED.value or row.received_at is None:
        return None
    received = row.received_at
    if received.tzinfo is None:
        received = received.replace(tzinfo=UTC)
    return int(next_retry_at(received, row.attempts).timestamp())


# ---- one object: its rows, the rows around it, and its history -------------------------------


@dataclass(frozen=True)
class Related:
    title: str
    table: str
    rows: list[dict[str, Any]]


@dataclass
class HistoryEntry:
    event: Any
    via: str  # how the event touched the object: "own", "invoice", "alert", "last write"
    snapshot: dict[str, Any] | None
    diff: Diff | None = None
    first: bool = False  # the first snapshot shown


@dataclass
class ObjectPage:
    object_id: str
    rows: list[tuple[str, dict[str, Any]]]  # (table, row) holding the id
    related: list[Related] = field(default_factory=list)
    history: list[HistoryEntry] = field(default_factory=list)
    total_events: int = 0  # before MAX_HISTORY


def _row_dict(row: Any) -> dict[str, Any]:
    return dict(row._mapping)


def _rows(
    connection: Connection, table: Table, where: ColumnElement[bool], order: Sequence[Any]
) -> list[Any]:
    query = select(table).where(where).order_by(*order).limit(RELATED_ROWS)
    return [_row_dict(row) for row in connection.execute(query)]


def _related(connection: Connection, table_name: str, row: dict[str, Any]) -> list[Related]:
    object_id = row["id"]
    found: list[Related] = []

    def add(title: str, model: type[SQLModel], column: str, order: Sequence[str]) -> None:
        table = table_of(model)
        where: ColumnElement[bool] = table.c[column] == object_id
        rows = _rows(connection, table, where, [table.c[name] for name in order])
        if rows:
            found.append(Related(title, table.name, rows))

    if table_name == "invoices":
        add("Lines", InvoiceLineItem, "invoice", ("position", "id"))
        add("Payments", InvoicePayment, "invoice", ("created", "id"))
        add("Invoice items seen on it", InvoiceItemInvoice, "invoice", ("invoice_item",))
        add("Newest complete line list", InvoiceLineSet, "invoice", ("invoice",))
    elif table_name == "invoice_items":
        add("Invoices it was seen on", InvoiceItemInvoice, "invoice_item", ("invoice",))
        add("Lines naming it", InvoiceLineItem, "invoice_item", ("invoice", "position"))
    elif table_name == "billing_meters":
        add("Alerts on it", BillingAlert, "meter", ("id",))
        add("Error reports", BillingMeterErrorReport, "meter", ("created", "event_id"))
    elif table_name == "billing_alerts":
        add("Triggers", BillingAlertTrigger, "alert", ("created", "event_id"))
    return found


def object_page(connection: Connection, object_id: str) -> ObjectPage:
    """The rows that hold ``object_id``, the rows around them, and every stored event that touched it,
    oldest first, each with the object's snapshot in that event and the changes from the one before."""
    rows: list[tuple[str, dict[str, Any]]] = []
    for table in OBJECT_TABLES:
        found = connection.execute(select(table).where(table.c.id == object_id)).first()
        if found is not None:
            rows.append((table.name, _row_dict(found)))
    page = ObjectPage(object_id, rows)
    for table_name, row in rows:
        page.related.extend(_related(connection, table_name, row))

    # Which events: the object's own (stripe_events.object_id), those of its invoice for a line or an
    # embedded payment, the triggers of an alert, and whatever wrote or deleted its row.
    via: dict[str, str] = {}
    conditions: list[ColumnElement[bool]] = [EVENTS.c.object_id == object_id]
    parent_invoices = {
        row["invoice"] for name, row in rows if name in ("invoice_line_items", "invoice_payments")
    }
    parent_invoices.discard(None)
    if parent_invoices:
        conditions.append(EVENTS.c.object_id.in_(sorted(parent_invoices)))
    if any(name == "billing_alerts" for name, _ in rows):
        conditions.append(EVENTS.c.id.in_(select(TRIGGERS.c.event_id).where(TRIGGERS.c.alert == object_id)))
    writers = {row.get(name) for _, row in rows for name in ("last_event_id", "deleted_by_event_id")}
    writers.discard(None)
    if writers:
        conditions.append(EVENTS.c.id.in_(sorted(writers)))
    where = or_(*conditions)
    page.total_events = int(
        connection.execute(select(func.count()).select_from(EVENTS).where(where)).scalar_one()
    )
    newest = connection.execute(
        select(*EVENT_COLUMNS, EVENTS.c.payload)
        .where(where)
        .order_by(EVENTS.c.created.desc(), EVENTS.c.id.desc())
        .limit(MAX_HISTORY)
    ).all()
    line_invoices = {row["invoice"] for name, row in rows if name == "invoice_line_items"}
    previous: dict[str, Any] | None = None
    for event in reversed(newest):
        try:
            body = json_value(event.payload)
        except ValueError:
            body = None
        snapshot = snapshot_of(body, object_id)
        if event.object_id == object_id:
            via[event.id] = "own"
        elif event.object_id in parent_invoices:
            if snapshot is None and event.object_id not in line_invoices:
                continue  # an event of the payment's invoice that does not embed the payment
            via[event.id] = "invoice"
        elif event.type == "billing.alert.triggered":
            via[event.id] = "alert"
        else:
            via[event.id] = "last write"
        entry = HistoryEntry(event, via[event.id], snapshot)
        if snapshot is not None:
            if previous is None:
                entry.first = True
            else:
                entry.diff = diff(previous, snapshot)
            previous = snapshot
        page.history.append(entry)
    return page


# ---- dead letters ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LetterPage:
    rows: list[Any]
    older: int | None  # the id to page from, when there are older letters


def dead_letters_page(connection: Connection, before_id: int | None, limit: int = PAGE_SIZE) -> LetterPage:
    preview = func.substr(LETTERS.c.body, 1, 400).label("preview")
    query = select(*dead_letter_summary(), preview)
    if before_id is not None:
        query = query.where(LETTERS.c.id < before_id)
    found = list(connection.execute(query.order_by(LETTERS.c.id.desc()).limit(limit + 1)))
    rows = found[:limit]
    return LetterPage(rows, rows[-1].id if len(found) > limit else None)


# ---- the overview: counts, lag, sync ---------------------------------------------------------


@dataclass(frozen=True)
class TableCount:
    table: str
    rows: int
    estimated: bool


@dataclass(frozen=True)
class Overview:
    counts: list[TableCount]
    failed: int
    dead_letters: int
    newest_applied: int | None  # created of the newest applied event
    lag_seconds: int | None
    sync_state: list[Any]
    sync_windows: list[Any]


def _estimates(connection: Connection, names: Sequence[str]) -> dict[str, int]:
    if connection.dialect.name != "postgresql":
        return {}
    query = text(
        "SELECT c.relname, c.reltuples::bigint FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = current_schema() AND c.relkind = 'r' AND c.relname = ANY(:names)"
    )
    return {name: int(rows) for name, rows in connection.execute(query, {"names": list(names)})}


def table_counts(connection: Connection) -> list[TableCount]:
    """Rows per table: exact, except the planner's estimate for a PostgreSQL table past a million."""
    tables = SQLModel.metadata.sorted_tables
    estimates = _estimates(connection, [table.name for table in tables])
    counts = []
    for table in sorted(tables, key=lambda table: table.name):
        estimate = estimates.get(table.name, -1)
        if estimate >= EXACT_COUNT_BELOW:
            counts.append(TableCount(table.name, estimate, True))
            continue
        exact = connection.execute(select(func.count()).select_from(table)).scalar_one()
        counts.append(TableCount(table.name, int(exact), False))
    return counts


def overview(connection: Connection, now: float | None = None) -> Overview:
    moment = time.time() if now is None else now
    failed = connection.execute(
        select(func.count()).select_from(EVENTS).where(EVENTS.c.outcome == Outcome.FAILED.value)
    ).scalar_one()
    letters = connection.execute(select(func.count()).select_from(LETTERS)).scalar_one()
    newest = connection.execute(
        select(func.max(EVENTS.c.created)).where(EVENTS.c.outcome == Outcome.APPLIED.value)
    ).scalar_one()
    state = list(connection.execute(select(STATE).order_by(STATE.c.account, STATE.c.resource)))
    done: Column[Any] = WINDOWS.c.done
    windows = list(
        connection.execute(
            select(
                WINDOWS.c.account,
                WINDOWS.c.resource,
                func.count().label("windows"),
                func.sum(case((done, 1), else_=0)).label("done"),
                func.sum(WINDOWS.c.objects).label("objects"),
                func.sum(WINDOWS.c.pages).label("pages"),
                func.max(WINDOWS.c.updated_at).label("updated_at"),
            )
            .group_by(WINDOWS.c.account, WINDOWS.c.resource)
            .order_by(WINDOWS.c.account, WINDOWS.c.resource)
        )
    )
    return Overview(
        counts=table_counts(connection),
        failed=int(failed),
        dead_letters=int(letters),
        newest_applied=None if newest is None else int(newest),
        lag_seconds=None if newest is None else max(0, int(moment) - int(newest)),
        sync_state=state,
        sync_windows=windows,
    )
