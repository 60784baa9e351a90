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
from app.mirror.envelope import EventSource, parse_event
from app.mirror.outcome import Outcome
from app.sync.fetch import StripeApi
from app.sync.resources import ALERTS, INVOICE_ITEMS, INVOICE_PAYMENTS, INVOICES, METERS, TEMPLATES, Resource
from app.sync.resources import fetched_snapshot as snapshot
from tests.stripe_server import objects
from tests.stripe_server.app import API_KEY, API_VERSION
from tests.support import T0, encode, make_event, reset

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


def test_a_batch_merged_across_events_ends_and_answers_as_one_event_after_another(
    pg_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events whose rows are disjoint are written with one statement per kind of write for the whole
    batch; the tables and every event's outcome are those of writing them one after another, also
    with events about the same objects in the batch (a stale snapshot, a tie, a tombstone, an item
    named by an invoice's lines, an invoice twice)."""
    from tests.mirror.test_convergence import billing_pool, payments_and_items_pool

    pool = [*payments_and_items_pool(), *billing_pool()]
    pool += [
        make_event("invoiceitem.created", objects.invoice_item(date=T0 + n), event_id=f"evt_many_{n}")
        for n in range(40)
    ]
    events = [parse_event(encode(event)) for event in pool]
    merged_statements: list[int] = []
    send_merged = writes._send_merged

    def counted(driver: Any, queued: writes.Queued, sql: str, entries: Any) -> None:
        merged_statements.append(len(entries))
        send_merged(driver, queued, sql, entries)

    def ingest_all() -> tuple[list[Any], dict[str, list[str]]]:
        reset(pg_engine)
        results = EventStore(pg_engine).ingest(events, keep_order=True)
        return [(r.event_id, r.outcome, r.duplicate) for r in results], table_texts(pg_engine)

    monkeypatch.setattr(writes, "_send_merged", counted)
    merged = ingest_all()
    assert max(merged_statements) >= 40, "the batch's writes were not merged"

    monkeypatch.setattr(writes, "FOOTPRINTS", {})
    one_after_another = ingest_all()

    assert merged == one_after_another
    assert {outcome for _, outcome, _ in merged[0]} >= {Outcome.APPLIED, Outcome.STALE}


def test_events_sharing_a_row_are_layered_and_each_keeps_the_order_of_its_statements(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    footprints = {sql: (lambda row: (("t", row["id"]),)) for sql in ("A", "B", "C")}
    monkeypatch.setattr(writes, "FOOTPRINTS", footprints)
    one, two, three, four = ({"id": name} for name in ("1", "2", "3", "4"))
    planned = [
        [("A", one, False), ("B", two, False)],
        [("B", three, False)],
        [("A", two, False)],  # shares row 2 with the first event: after it
        [("C", four, False), ("A", {"id": "5"}, False)],
    ]
    assert writes._layers(planned) == [[0, 1, 3], [2]]
    stages = writes._stages(planned, [0, 1, 3])
    assert [sql for sql, _ in stages] == ["C", "A", "B"]  # A before B (first event), C before A (fourth)
    assert dict(stages)["A"] == [(0, one, False), (3, {"id": "5"}, False)]

    # A write without a footprint: every event in turn, unmerged.
    assert writes._layers([[("A", one, False)], [("unknown", two, False)]]) is None
    # Events that disagree on the order of two statements are not merged within their layer.
    crossed = [[("A", one, False), ("B", two, False)], [("B", three, False), ("A", four, False)]]
    assert [
        (sql, [event for event, _, _ in entries]) for sql, entries in writes._stages(crossed, [0, 1])
    ] == [
        ("A", [0]),
        ("B", [0]),
        ("B", [1]),
        ("A", [1]),
    ]
