"""What the mirror knows is out of date is read again: items pulled onto an invoice, invoices whose lines
past the first page are missing; and ``serve`` with an API key does it, and catches up, by itself."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from app.db.engine import make_engine
from app.ingest.store import EventStore
from app.mirror.envelope import parse_event
from app.sync.background import exclusive
from app.sync.fetch import StripeApi, StripeReader
from app.sync.refresh import out_of_date, refresh
from app.testing.dump import rows
from tests.stripe_server import objects
from tests.stripe_server.app import API_KEY, API_VERSION
from tests.stripe_server.runner import RunningServer
from tests.stripe_server.store import INVOICE_ITEMS, INVOICES
from tests.support import T0, LiveServer, encode, make_event, one, payloads, signed_headers

NOW = T0 + 3_600


def reader_for(stripe_api: RunningServer) -> StripeReader:
    return StripeReader(StripeApi(API_KEY, API_VERSION, api_base=stripe_api.url, max_rps=500))


def receive(engine: Engine, *events: dict[str, Any]) -> None:
    for result in EventStore(engine).ingest([parse_event(encode(event)) for event in events]):
        assert not isinstance(result, Exception) and result.error is None, result


def stale_account(stripe_api: RunningServer) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """In Stripe: an item on an invoice of 14 lines, and that invoice. What webhooks told the mirror:
    the item while it was pending, and the invoice with its first 10 lines."""
    store = stripe_api.server.store
    pending = objects.invoice_item(date=T0)
    invoice = objects.invoice(created=T0 + 10, lines=[objects.line_item(invoice_item=pending["id"])] * 1)
    invoice["lines"]["data"] += [objects.line_item() for _ in range(13)]
    stored_invoice = store.put(INVOICES, invoice)
    on_invoice = store.put(INVOICE_ITEMS, dict(pending, invoice=invoice["id"]))
    return pending, stored_invoice, on_invoice


def test_out_of_date_objects_are_read_again_once(stripe_api: RunningServer, engine: Engine) -> None:
    pending, invoice, _ = stale_account(stripe_api)
    receive(
        engine,
        make_event("invoiceitem.created", pending, created=T0),
        make_event("invoice.created", invoice, created=T0 + 10),
    )
    assert one(engine, "invoices", id=invoice["id"])["lines_incomplete"] is True
    assert {object_id for _, object_id in out_of_date(engine, None)} == {pending["id"], invoice["id"]}
    stripe_api.server.clock.set(NOW)

    report = refresh(reader_for(stripe_api), engine, EventStore(engine))

    assert (report.items, report.invoices, report.failed) == (1, 1, 0)
    assert payloads(engine, "invoice_items")[pending["id"]]["invoice"] == invoice["id"]
    assert one(engine, "invoices", id=invoice["id"])["lines_incomplete"] is False
    assert len(rows(engine, "invoice_line_items", invoice=invoice["id"])) == 14
    assert {
        row["source"] for row in rows(engine, "stripe_events") if row["type"].startswith("snapshot.")
    } == {"refresh"}
    assert out_of_date(engine, None) == []
    stripe_api.server.log.clear()
    assert refresh(reader_for(stripe_api), engine, EventStore(engine)).total == 0
    assert stripe_api.server.log.entries == []


def test_an_item_stripe_still_calls_pending_is_read_once_and_an_invoice_gone_is_tombstoned(
    stripe_api: RunningServer, engine: Engine
) -> None:
    pending, invoice, _ = stale_account(stripe_api)
    stripe_api.server.store.put(INVOICE_ITEMS, pending)  # taken off the invoice since
    stripe_api.server.store.delete(INVOICES, invoice["id"])
    receive(
        engine,
        make_event("invoiceitem.created", pending, created=T0),
        make_event("invoice.created", invoice, created=T0 + 10),
    )
    stripe_api.server.clock.set(NOW)

    report = refresh(reader_for(stripe_api), engine, EventStore(engine))

    assert (report.items, report.invoices, report.gone) == (1, 1, 1)
    assert one(engine, "invoices", id=invoice["id"])["deleted"] is True
    assert out_of_date(engine, None) == []  # the item's snapshot is newer than the line that named it


def test_one_holder_of_a_lock_at_a_time(db_url: str, engine: Engine) -> None:
    with exclusive(engine, db_url, "test-lock") as first:
        other = make_engine(db_url)
        try:
            with exclusive(other, db_url, "test-lock") as second:
                assert (first, second) == (True, False)
            with exclusive(other, db_url, "another-lock") as unrelated:
                assert unrelated
        finally:
            other.dispose()
    with exclusive(engine, db_url, "test-lock") as again:
        assert again


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not within the time limit"
        time.sleep(0.1)


@pytest.mark.slow
def test_serve_with_an_api_key_catches_up_and_refreshes_by_itself(
    stripe_api: RunningServer, db_url: str, engine: Engine, live_server: Callable[..., LiveServer]
) -> None:
    pending, invoice, _ = stale_account(stripe_api)
    missed = objects.invoice_item(date=T0 + 20)
    stripe_api.server.store.add_event(objects.event("invoiceitem.created", missed, created=T0 + 20))
    stripe_api.server.clock.set(NOW)
    server = live_server(
        workers=2,
        STRIPE_API_KEY=API_KEY,
        STRIPE_API_BASE=stripe_api.url,
        STRIPE_API_VERSION=API_VERSION,
        BILLING_MIRROR_CATCH_UP_EVERY="1s",
        BILLING_MIRROR_REFRESH_EVERY="1s",
    )
    for event in (
        make_event("invoiceitem.created", pending, created=T0),
        make_event("invoice.created", invoice, created=T0 + 10),
    ):
        body = encode(event)
        response = httpx.post(
            f"{server.url}/webhooks/stripe", content=body, headers=signed_headers(body, int(time.time()))
        )
        assert response.status_code == 200, response.text

    wait_for(lambda: one(engine, "invoices", id=invoice["id"])["lines_incomplete"] is False)
    wait_for(lambda: payloads(engine, "invoice_items").get(pending["id"], {}).get("invoice") == invoice["id"])
    wait_for(lambda: missed["id"] in payloads(engine, "invoice_items"))
    sources = {row["source"] for row in rows(engine, "stripe_events")}
    assert {"webhook", "events_api", "refresh"} <= sources
