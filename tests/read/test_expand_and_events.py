"""The read API answers what Stripe would: ``expand[]=payments`` on invoices, array parameters in every
encoding Stripe's libraries send, and the stored events at GET /v1/events (both databases)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import Engine
from starlette.testclient import TestClient

from app.ingest.store import EventStore
from app.mirror.envelope import EventSource, parse_event
from app.mirror.snapshots import snapshot_event
from app.testing.dump import rows
from tests.support import (
    T0,
    encode,
    error_of,
    get,
    ids,
    ingest_batch,
    ingest_each,
    make_event,
    payment,
    payment_event,
    recorded,
    run_cli,
    snapshot_of,
)

INVOICE = "in_1SyA10B7WZ01zgkWrnwlA001"


@pytest.fixture
def invoice_with_payments(engine: Engine) -> list[dict[str, Any]]:
    ingest_each(engine, recorded("invoice.created"))
    payments = [payment(f"inpay_{n:02d}", T0 + n, invoice=INVOICE) for n in range(12)]
    ingest_batch(engine, [payment_event(obj) for obj in payments])
    return payments


@pytest.mark.parametrize("query", ["expand[]=payments", "expand[0]=payments", "expand=payments"])
def test_an_invoice_expands_its_payments(
    api: TestClient, invoice_with_payments: list[dict[str, Any]], query: str
) -> None:
    plain = get(api, f"/v1/invoices/{INVOICE}")
    response = api.get(f"/v1/invoices/{INVOICE}?{query}")
    assert response.status_code == 200, response.text
    expanded = response.json()
    assert {key: value for key, value in expanded.items() if key != "payments"} == plain
    payments = expanded["payments"]
    assert payments["object"] == "list" and payments["has_more"] is True
    assert payments["url"] == f"/v1/invoice_payments?invoice={INVOICE}"
    newest_first = list(reversed(invoice_with_payments))
    assert payments["data"] == newest_first[:10]
    # The url pages the rest, as the SDK does with a nested list.
    rest = get(api, "/v1/invoice_payments", invoice=INVOICE, starting_after=payments["data"][-1]["id"])
    assert ids(rest) == [obj["id"] for obj in newest_first[10:]]


def test_the_invoice_list_expands_data_payments(
    api: TestClient, engine: Engine, invoice_with_payments: list[dict[str, Any]]
) -> None:
    ingest_each(engine, recorded("invoice.created.has_more"))  # another invoice, without payments
    body = api.get("/v1/invoices?expand[]=data.payments&expand[]=data.payments").json()
    by_id = {obj["id"]: obj for obj in body["data"]}
    assert len(by_id[INVOICE]["payments"]["data"]) == 10
    others = [obj for invoice_id, obj in by_id.items() if invoice_id != INVOICE]
    assert others and all(obj["payments"]["data"] == [] for obj in others)
    plain = api.get("/v1/invoices").json()
    assert [{k: v for k, v in obj.items() if k != "payments"} for obj in body["data"]] == plain["data"]


@pytest.mark.parametrize(
    ("path", "query", "refused"),
    [
        (f"/v1/invoices/{INVOICE}", "expand[]=customer", "customer"),
        ("/v1/invoices", "expand[]=payments", "payments"),  # a list expands data.payments
        (f"/v1/invoices/{INVOICE}", "expand[]=data.payments", "data.payments"),
        ("/v1/invoiceitems", "expand[]=data.invoice", "data.invoice"),
        ("/v1/invoice_payments/inpay_00", "expand[0]=invoice", "invoice"),
        (f"/v1/invoices/{INVOICE}/lines", "expand[]=data.price", "data.price"),
    ],
)
def test_any_other_expansion_is_refused_by_name(
    api: TestClient, invoice_with_payments: list[dict[str, Any]], path: str, query: str, refused: str
) -> None:
    error = error_of(api.get(f"{path}?{query}"), 400)
    assert error["message"] == f"This property cannot be expanded ({refused})."
    assert error["param"] == "expand"


# ---- GET /v1/events --------------------------------------------------------------------------


@pytest.fixture
def stored_events(engine: Engine) -> list[dict[str, Any]]:
    invoice = snapshot_of("invoice.created")
    events = [
        make_event("invoice.created", invoice, event_id=f"evt_inv_{n:02d}", created=T0 + n // 2)
        for n in range(8)
    ]
    events.append(
        make_event("invoice_payment.paid", payment("inpay_x", T0 + 20), event_id="evt_pay", created=T0 + 20)
    )
    events.append(
        make_event(
            "customer.updated", {"id": "cus_1", "object": "customer"}, event_id="evt_cus", created=T0 + 30
        )
    )
    ingest_batch(engine, [event for event in events if event["type"] != "customer.updated"])
    ingest_each(engine, events[-1])
    return events


def test_events_are_listed_newest_first_as_stored(
    api: TestClient, stored_events: list[dict[str, Any]]
) -> None:
    body = get(api, "/v1/events", limit=100)
    assert body["url"] == "/v1/events" and body["has_more"] is False
    newest_first = sorted(stored_events, key=lambda event: (event["created"], event["id"]), reverse=True)
    assert body["data"] == newest_first
    assert get(api, "/v1/events/evt_pay") == stored_events[8]
    error = error_of(api.get("/v1/events/evt_nothing"), 404)
    assert error["code"] == "resource_missing"


@pytest.mark.parametrize(
    "query",
    [
        "types[]=invoice_payment.paid&types[]=customer.updated",
        "types[0]=invoice_payment.paid&types[1]=customer.updated",
        "types=invoice_payment.paid&types=customer.updated",
    ],
)
def test_types_in_every_array_encoding(
    api: TestClient, stored_events: list[dict[str, Any]], query: str
) -> None:
    assert ids(api.get(f"/v1/events?{query}").json()) == ["evt_cus", "evt_pay"]


def test_type_groups_created_and_paging(api: TestClient, stored_events: list[dict[str, Any]]) -> None:
    assert ids(get(api, "/v1/events", type="invoice.*", limit=100)) == [
        f"evt_inv_{n:02d}" for n in (7, 6, 5, 4, 3, 2, 1, 0)
    ]
    assert ids(get(api, "/v1/events", type="invoice_payment.paid")) == ["evt_pay"]
    assert ids(get(api, "/v1/events", **{"created[gte]": T0 + 3, "created[lt]": T0 + 30})) == [
        "evt_pay",
        "evt_inv_07",
        "evt_inv_06",
    ]
    seen: list[str] = []
    cursor: dict[str, str] = {}
    while True:
        page = get(api, "/v1/events", limit=3, **cursor)
        seen += ids(page)
        if not page["has_more"]:
            break
        cursor = {"starting_after": seen[-1]}
    assert seen == ids(get(api, "/v1/events", limit=100))
    error = error_of(api.get("/v1/events?type=invoice.*&types[]=invoice.paid"), 400)
    assert error["param"] == "types"
    too_many = "&".join(f"types[]=t{n}" for n in range(21))
    assert error_of(api.get(f"/v1/events?{too_many}"), 400)["param"] == "types"


def test_snapshot_and_thin_events_stay_out_unless_asked(
    api: TestClient, engine: Engine, stored_events: list[dict[str, Any]]
) -> None:
    snapshot = snapshot_event(
        "invoice_payment",
        [payment("inpay_y", T0 + 40)],
        fetched_at=T0 + 50,
        url="/v1/invoice_payments",
        origin=EventSource.SYNC,
        api_version=None,
        livemode=False,
    )
    EventStore(engine).ingest([snapshot])
    thin = recorded("v1.billing.meter.error_report_triggered")
    EventStore(engine).ingest([parse_event(encode(thin))])
    listed = ids(get(api, "/v1/events", limit=100))
    assert snapshot.id not in listed and thin["id"] not in listed
    assert error_of(api.get(f"/v1/events/{thin['id']}"), 404)["code"] == "resource_missing"
    assert ids(get(api, "/v1/events", type="snapshot.*")) == [snapshot.id]
    assert json.loads(api.get(f"/v1/events/{snapshot.id}").text)["type"] == "snapshot.invoice_payment"


# ---- Connect: Stripe-Account ---------------------------------------------------------------


def test_a_stripe_account_header_reads_that_account_only(api: TestClient, engine: Engine) -> None:
    """Every row records the account of the event that wrote it; the read API answers as Stripe does:
    with Stripe-Account only that account's objects, without it only the platform's own."""
    theirs = make_event("invoice_payment.paid", payment("inpay_theirs", T0 + 1), created=T0 + 1)
    theirs["account"] = "acct_connected"
    mine = make_event("invoice_payment.paid", payment("inpay_mine", T0 + 2), created=T0 + 2)
    ingest_batch(engine, [theirs, mine])
    assert {row["id"]: row["account"] for row in rows(engine, "invoice_payments")} == {
        "inpay_theirs": "acct_connected",
        "inpay_mine": None,
    }
    connected = {"Stripe-Account": "acct_connected"}
    assert ids(get(api, "/v1/invoice_payments")) == ["inpay_mine"]
    assert ids(api.get("/v1/invoice_payments", headers=connected).json()) == ["inpay_theirs"]
    assert api.get("/v1/invoice_payments/inpay_theirs", headers=connected).json()["id"] == "inpay_theirs"
    assert error_of(api.get("/v1/invoice_payments/inpay_theirs"), 404)["code"] == "resource_missing"
    cursor = api.get("/v1/invoice_payments?starting_after=inpay_mine", headers=connected)
    assert error_of(cursor, 400)["param"] == "starting_after"
    assert ids(api.get("/v1/events", headers=connected).json()) == [theirs["id"]]
    assert ids(get(api, "/v1/events")) == [mine["id"]]
    listed = run_cli(
        "payments", "list", "--json", "--stripe-account", "acct_connected", "--database-url", str(engine.url)
    )
    assert listed.exit_code == 0, listed.output
    assert [obj["id"] for obj in json.loads(listed.output)["data"]] == ["inpay_theirs"]
