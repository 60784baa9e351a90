"""``billing-mirror reconcile``: the mirror compared with the Stripe-compatible test server object by
object, drift reported and fixed, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import Engine

from app.ingest.store import EventStore
from app.mirror.envelope import parse_event
from app.testing.dump import rows
from tests.stripe_server import objects
from tests.stripe_server.runner import RunningServer
from tests.stripe_server.store import INVOICE_ITEMS, INVOICE_PAYMENTS, INVOICES, TEMPLATES, Store
from tests.support import T0, encode, make_event, one, payloads, run_cli, sync_args

NOW = T0 + 86_400


def account(store: Store) -> dict[str, list[dict[str, Any]]]:
    made: dict[str, list[dict[str, Any]]] = {}
    made[INVOICE_ITEMS] = [
        store.put(INVOICE_ITEMS, objects.invoice_item(date=T0 + n // 4)) for n in range(300)
    ]
    made[INVOICES] = [store.put(INVOICES, objects.invoice(created=T0 + n, lines=14)) for n in range(5)]
    made[INVOICE_PAYMENTS] = [
        store.put(INVOICE_PAYMENTS, objects.invoice_payment(created=T0 + n, invoice=made[INVOICES][n]["id"]))
        for n in range(3)
    ]
    made[TEMPLATES] = [store.put(TEMPLATES, objects.rendering_template(created=T0))]
    return made


def reconcile(server: RunningServer, db_url: str, *extra: str) -> Any:
    return run_cli("reconcile", *sync_args(server.url, db_url, *extra))


@pytest.fixture
def synced(stripe_api: RunningServer, db_url: str) -> dict[str, list[dict[str, Any]]]:
    made = account(stripe_api.server.store)
    stripe_api.server.clock.set(NOW)
    assert run_cli("sync", *sync_args(stripe_api.url, db_url)).exit_code == 0
    stripe_api.server.clock.set(NOW + 60)
    stripe_api.server.log.clear()
    return made


def test_a_synced_mirror_has_no_drift(
    stripe_api: RunningServer, db_url: str, synced: dict[str, list[dict[str, Any]]], monkeypatch: Any
) -> None:
    monkeypatch.setattr("app.sync.reconcile.WINDOW_ROWS", 40)  # many windows, compared one by one

    result = reconcile(stripe_api, db_url)

    assert result.exit_code == 0, result.output
    assert "invoiceitems: 300 in Stripe, 300 in the mirror; 0 missing, 0 extra, 0 different" in result.output
    assert "invoices: 5 in Stripe, 5 in the mirror; 0 missing, 0 extra, 0 different" in result.output
    windows = {
        json.dumps(e.params.get("created"), sort_keys=True)
        for e in stripe_api.server.log.matching("/v1/invoiceitems")
        if e.params
    }
    assert len(windows) >= 300 // 40
    assert not stripe_api.server.log.matching(r"/v1/invoiceitems/.+")  # nothing to confirm


def test_drift_is_reported_then_fixed(
    stripe_api: RunningServer, db_url: str, engine: Engine, synced: dict[str, list[dict[str, Any]]]
) -> None:
    store = stripe_api.server.store
    edited = dict(synced[INVOICE_ITEMS][0], description="edited without an event")
    store.put(INVOICE_ITEMS, edited)
    added = store.put(INVOICE_ITEMS, objects.invoice_item(date=T0 + 5))
    gone = synced[INVOICE_ITEMS][1]["id"]
    store.delete(INVOICE_ITEMS, gone)
    invoice = dict(synced[INVOICES][0])
    invoice["lines"] = {**invoice["lines"], "data": [objects.line_item() for _ in range(13)]}
    store.put(INVOICES, invoice)
    canceled = dict(synced[INVOICE_PAYMENTS][0], status="canceled")
    store.put(INVOICE_PAYMENTS, canceled)
    archived = dict(synced[TEMPLATES][0], status="archived")
    store.put(TEMPLATES, archived)

    found = reconcile(stripe_api, db_url, "--json")

    assert found.exit_code == 1, found.output
    report = json.loads(found.output)
    assert report["drift"] is True
    differences = {(d["resource"], d["id"]): d for check in report["resources"] for d in check["differences"]}
    assert {key: d["kind"] for key, d in differences.items()} == {
        ("invoiceitems", edited["id"]): "different",
        ("invoiceitems", added["id"]): "missing",
        ("invoiceitems", gone): "extra",
        ("invoices", invoice["id"]): "different",
        ("invoice_payments", canceled["id"]): "different",
        ("templates", archived["id"]): "different",
    }
    assert differences[("invoiceitems", edited["id"])]["fields"] == ["description"]
    assert differences[("invoices", invoice["id"])]["fields"] == ["lines"]
    assert differences[("invoice_payments", canceled["id"])]["fields"] == ["status"]
    assert not any(d["fixed"] for d in differences.values())

    fixed = reconcile(stripe_api, db_url, "--fix")

    assert fixed.exit_code == 0, fixed.output
    assert fixed.output.count("[fixed]") == 6
    assert payloads(engine, "invoice_items")[edited["id"]]["description"] == "edited without an event"
    assert added["id"] in payloads(engine, "invoice_items")
    assert one(engine, "invoice_items", id=gone)["deleted"] is True
    lines = [
        row["id"]
        for row in sorted(
            rows(engine, "invoice_line_items", invoice=invoice["id"]), key=lambda r: r["position"]
        )
    ]
    assert lines == [line["id"] for line in invoice["lines"]["data"]]
    assert one(engine, "invoice_payments", id=canceled["id"])["status"] == "canceled"
    assert one(engine, "invoice_rendering_templates", id=archived["id"])["status"] == "archived"
    sources = {row["source"] for row in rows(engine, "stripe_events") if row["type"].startswith("snapshot.")}
    assert sources == {"sync", "reconcile"}
    assert reconcile(stripe_api, db_url).exit_code == 0


def test_a_mirror_ahead_of_stripe_is_not_drift(
    stripe_api: RunningServer, db_url: str, engine: Engine, synced: dict[str, list[dict[str, Any]]]
) -> None:
    """A webhook created after Stripe's list was read explains the difference: it is newer."""
    item = synced[INVOICE_ITEMS][2]
    newer = make_event("invoiceitem.created", dict(item, description="newer"), created=NOW + 3600)
    EventStore(engine).ingest([parse_event(encode(newer))])

    result = reconcile(stripe_api, db_url, "items")

    assert result.exit_code == 0, result.output
    assert "0 different" in result.output


def test_what_cannot_be_fixed_stays_drift(
    stripe_api: RunningServer, db_url: str, synced: dict[str, list[dict[str, Any]]]
) -> None:
    """Invoice payments are never deleted in the mirror: one gone from Stripe is reported, not hidden."""
    gone = synced[INVOICE_PAYMENTS][1]["id"]
    stripe_api.server.store.delete(INVOICE_PAYMENTS, gone)

    result = reconcile(stripe_api, db_url, "payments", "--fix")

    assert result.exit_code == 1
    assert (
        f"extra {gone}: gone from Stripe; the mirror keeps no tombstone for invoice_payments" in result.output
    )
