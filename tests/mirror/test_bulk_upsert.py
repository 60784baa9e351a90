"""PostgreSQL writes the many rows of one snapshot (a page of objects, an invoice's lines) with one
statement (app.mirror.writes.BulkForm): it must leave every table exactly as one upsert per row does,
JSON null and SQL NULL included, and fall back to one per row when a key comes twice."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlmodel import SQLModel

from app.db.engine import make_engine
from app.ingest.apply import IngestResult
from app.ingest.store import EventStore
from app.mirror import writes
from app.mirror.envelope import EventSource
from app.mirror.outcome import Outcome
from app.sync.fetch import StripeApi
from app.sync.resources import ALERTS, INVOICE_ITEMS, INVOICE_PAYMENTS, INVOICES, METERS, TEMPLATES, Resource
from app.sync.resources import fetched_snapshot as snapshot
from tests.stripe_server import objects
from tests.stripe_server.app import API_KEY, API_VERSION
from tests.support import T0, reset

pytestmark = pytest.mark.postgres

API = StripeApi(api_key=API_KEY, stripe_version=API_VERSION)


@pytest.fixture
def pg_engine(pg_session_database: str) -> Iterator[Engine]:
    engine = make_engine(pg_session_database)
    yield engine
    engine.dispose()


def pages() -> list[tuple[Resource, list[dict[str, Any]]]]:
    """One page of each resource, with the values a column may find hard: nulls in JSON and text
    columns, empty and full JSON, false, large integers, text beyond ASCII, quotes and backslashes."""
    items = [
        objects.invoice_item(date=T0, metadata={}, description=None),
        objects.invoice_item(date=T0 + 1, metadata={"note": 'say "hi" \\ ok'}, discountable=False),
        objects.invoice_item(date=T0 + 2, amount=2**62, description="Żółć ☃ 請求書", parent=None),
        objects.invoice_item(date=T0 + 3, invoice="in_elsewhere", amount=-5),
    ]
    invoices = [
        objects.invoice(created=T0, lines=3, status="paid"),
        objects.invoice(created=T0 + 1, lines=1, status="draft", metadata={"a": None}),
    ]
    payments = [objects.invoice_payment(created=T0, invoice=invoices[0]["id"]) for _ in range(3)]
    meters = [objects.meter(created=T0 + n) for n in range(2)]
    alerts = [objects.alert(meter_id=meters[0]["id"]) for _ in range(2)]
    templates = [objects.rendering_template(created=T0 + n) for n in range(2)]
    return [
        (INVOICE_ITEMS, items),
        (INVOICES, invoices),
        (INVOICE_PAYMENTS, payments),
        (METERS, meters),
        (ALERTS, alerts),
        (TEMPLATES, templates),
    ]


def ingest_pages(engine: Engine, written: list[tuple[Resource, list[dict[str, Any]]]]) -> None:
    store = EventStore(engine)
    events = [
        snapshot(API, resource, page, fetched_at=T0 + 100, request_id=None, origin=EventSource.SYNC)
        for resource, page in written
    ]
    for result in store.ingest(store.plan(events)):
        assert isinstance(result, IngestResult) and result.outcome is Outcome.APPLIED, result


def table_texts(engine: Engine) -> dict[str, list[str]]:
    """Every mirrored row as PostgreSQL prints it (a NULL is empty, a JSON null is ``null``), without
    the event ids that name the snapshot."""
    texts: dict[str, list[str]] = {}
    with engine.connect() as connection:
        for table in SQLModel.metadata.sorted_tables:
            if table.name in ("stripe_events", "dead_letters", "sync_windows", "sync_state"):
                continue
            columns = [f'"{column.name}"' for column in table.columns if "event_id" not in column.name]
            query = f"SELECT ROW({', '.join(columns)})::text AS row FROM {table.name} ORDER BY 1"
            texts[table.name] = [row.row for row in connection.execute(text(query))]
    return texts


def test_one_statement_per_page_writes_what_one_per_row_does(
    pg_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = pages()
    bulk_rows: list[int] = []
    params = writes.BulkForm.params

    def counted(form: writes.BulkForm, rows: Any) -> Any:
        bulk_rows.append(len(rows))
        return params(form, rows)

    monkeypatch.setattr(writes.BulkForm, "params", counted)
    reset(pg_engine)
    ingest_pages(pg_engine, written)
    in_bulk = table_texts(pg_engine)
    assert sum(bulk_rows) >= 4 + 3 + 3, "the pages were not written in bulk"

    monkeypatch.setattr(writes, "BULK_FORMS", {})
    reset(pg_engine)
    ingest_pages(pg_engine, written)
    row_by_row = table_texts(pg_engine)

    assert in_bulk == row_by_row
    assert len(in_bulk["invoice_items"]) == 4 and len(in_bulk["invoice_line_items"]) == 4


def test_a_key_given_twice_in_one_page_is_written_row_by_row(pg_engine: Engine) -> None:
    item = objects.invoice_item(date=T0)
    again = {**item, "amount": 2500}
    reset(pg_engine)

    ingest_pages(pg_engine, [(INVOICE_ITEMS, [item, again, objects.invoice_item(date=T0 + 1)])])

    with pg_engine.connect() as connection:
        amounts = connection.execute(
            text("SELECT amount FROM invoice_items WHERE id = :id"), {"id": item["id"]}
        )
        assert amounts.scalars().all() == [2500]  # the same version twice: the later row wins, as in order
        assert connection.execute(text("SELECT count(*) FROM invoice_items")).scalar_one() == 2
