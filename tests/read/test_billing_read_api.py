"""GET /v1/invoices (+ /lines), /v1/billing/meters, /v1/billing/alerts, /v1/invoice_rendering_templates:
the real app on both databases, filled by the recorded deliveries and the templates backfill."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import Engine
from starlette.testclient import TestClient

from app.mirror.envelope import parse_event
from app.recording.backfill import backfill_lines, backfill_templates, read_list, run_in_transaction
from tests.billing import (
    EVENT_FIXTURES,
    INVOICE_A,
    INVOICE_G,
    METER,
    T0,
    fixture_path,
    ingest,
    recorded,
    snapshot_of,
)
from tests.events import encode, load_fixture, make_event
from tests.mirror_data import API_KEY, error_of, get, ids

B, C, D, E = (
    "in_1SyB10B7WZ01zgkWmanlB001",
    "in_1SyC10B7WZ01zgkWtaxfC001",
    "in_1SyD10B7WZ01zgkWovrpD001",
    "in_1SyE10B7WZ01zgkWdraftE01",
)
OTHER = "in_1SyZ10B7WZ01zgkWotherZ01"
ALERT = "alrt_61SyG10B7WZ01zgkW3Rt5uVw"
TEMPLATES = fixture_path("invoice_rendering_templates.list.json")


@pytest.fixture
def mirror(engine: Engine) -> dict[str, dict[str, Any]]:
    """Every recorded delivery in creation order, one more customer's invoice, the templates.
    Returns the newest snapshot of each invoice."""
    events = [recorded(name) for name in EVENT_FIXTURES]
    events.sort(key=lambda event: (parse_event(encode(event)).created, event["id"]))
    other = snapshot_of("invoice.finalized") | {"id": OTHER, "customer": "cus_other", "created": T0 + 2000}
    other["parent"] = None
    other["lines"] = {"object": "list", "data": [], "has_more": False, "url": f"/v1/invoices/{OTHER}/lines"}
    events.append(make_event("invoice.finalized", other, created=T0 + 2100))
    ingest(engine, *events)
    run_in_transaction(engine, lambda session: backfill_templates(session, read_list(TEMPLATES).data))
    newest: dict[str, dict[str, Any]] = {}
    for event in events:
        obj = event.get("data", {}).get("object", {})
        if obj.get("object") == "invoice":
            newest[obj["id"]] = obj
    return newest


# ---- invoices ---------------------------------------------------------------------------------


def test_invoices_newest_first_as_last_sent_without_deleted(api: TestClient, mirror: dict[str, Any]) -> None:
    body = get(api, "/v1/invoices")
    assert (body["object"], body["url"], body["has_more"]) == ("list", "/v1/invoices", False)
    assert ids(body) == [INVOICE_G, OTHER, D, C, B, INVOICE_A]  # E is deleted
    assert body["data"][-1] == mirror[INVOICE_A]  # the invoice.paid snapshot, every field


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"customer": "cus_other"}, [OTHER]),
        ({"customer": "cus_TkQ7cW3mJ9xN2a"}, [INVOICE_G, D, C, B, INVOICE_A]),
        ({"status": "paid"}, [D, INVOICE_A]),
        ({"status": "void"}, [B]),
        ({"status": "open"}, [OTHER, C]),
        ({"status": "draft"}, [INVOICE_G]),
        ({"status": "uncollectible"}, []),
        ({"subscription": "sub_1SyA00B7WZ01zgkWq8Lm3N4p"}, [INVOICE_G, D, C, B, INVOICE_A]),
        ({"subscription": "sub_nope"}, []),
        ({"created[gte]": T0 + 300, "created[lt]": T0 + 2000}, [D, C, B]),
        ({"created": T0 + 900}, [C]),
        ({"customer": "cus_TkQ7cW3mJ9xN2a", "status": "paid", "limit": 1}, [D]),
    ],
)
def test_invoice_filters(
    api: TestClient, mirror: dict[str, Any], params: dict[str, Any], expected: list[str]
) -> None:
    assert ids(get(api, "/v1/invoices", **params)) == expected


def test_invoice_pages_both_ways(api: TestClient, mirror: dict[str, Any]) -> None:
    first = get(api, "/v1/invoices", limit=2)
    assert ids(first) == [INVOICE_G, OTHER] and first["has_more"] is True
    second = get(api, "/v1/invoices", limit=2, starting_after=OTHER)
    assert ids(second) == [D, C]
    back = get(api, "/v1/invoices", limit=2, ending_before=D)
    assert ids(back) == [INVOICE_G, OTHER]


def test_retrieve_invoice(api: TestClient, mirror: dict[str, Any]) -> None:
    assert get(api, f"/v1/invoices/{B}") == mirror[B]
    assert get(api, f"/v1/invoices/{E}") == {"id": E, "object": "invoice", "deleted": True}
    error = error_of(api.get("/v1/invoices/in_missing"), 404)
    assert (error["code"], error["message"]) == ("resource_missing", "No such invoice: 'in_missing'")


def test_invoice_parameters_are_checked(api: TestClient, mirror: dict[str, Any]) -> None:
    assert error_of(api.get("/v1/invoices", params={"status": "late"}), 400)["param"] == "status"
    assert error_of(api.get("/v1/invoices", params={"collection": "x"}), 400)["code"] == "parameter_unknown"
    assert error_of(api.get("/v1/invoices", params={"limit": 500}), 400)["param"] == "limit"


# ---- lines ------------------------------------------------------------------------------------


def test_lines_in_the_invoice_order(api: TestClient, mirror: dict[str, Any]) -> None:
    body = get(api, f"/v1/invoices/{INVOICE_A}/lines")
    assert (body["object"], body["url"], body["has_more"]) == (
        "list",
        f"/v1/invoices/{INVOICE_A}/lines",
        False,
    )
    assert body["data"] == mirror[INVOICE_A]["lines"]["data"]


def test_lines_page_through_the_invoice_order(
    api: TestClient, engine: Engine, mirror: dict[str, Any]
) -> None:
    run_in_transaction(
        engine,
        lambda session: backfill_lines(
            session, INVOICE_G, read_list(fixture_path("invoice_lines.in_G.json"))
        ),
    )
    expected = [
        line["id"] for line in json.loads(fixture_path("invoice_lines.in_G.json").read_text())["data"]
    ]
    seen: list[str] = []
    cursor: dict[str, str] = {}
    while True:
        page = get(api, f"/v1/invoices/{INVOICE_G}/lines", limit=5, **cursor)
        seen += ids(page)
        if not page["has_more"]:
            break
        cursor = {"starting_after": seen[-1]}
    assert seen == expected
    back = get(api, f"/v1/invoices/{INVOICE_G}/lines", limit=3, ending_before=expected[5])
    assert ids(back) == expected[2:5]


def test_lines_of_a_missing_or_deleted_invoice(api: TestClient, mirror: dict[str, Any]) -> None:
    for invoice_id in ("in_missing", E):
        error = error_of(api.get(f"/v1/invoices/{invoice_id}/lines"), 404)
        assert (error["code"], error["message"]) == ("resource_missing", f"No such invoice: '{invoice_id}'")
    assert get(api, f"/v1/invoices/{OTHER}/lines")["data"] == []
    assert (
        error_of(api.get(f"/v1/invoices/{INVOICE_A}/lines", params={"status": "x"}), 400)["param"] == "status"
    )


# ---- meters, alerts, templates ----------------------------------------------------------------


def test_meters(api: TestClient, mirror: dict[str, Any]) -> None:
    reactivated = recorded("billing.meter.reactivated")["data"]["object"]
    assert get(api, "/v1/billing/meters")["data"] == [reactivated]
    assert get(api, "/v1/billing/meters", status="active")["url"] == "/v1/billing/meters"
    assert ids(get(api, "/v1/billing/meters", status="inactive")) == []
    assert get(api, f"/v1/billing/meters/{METER}") == reactivated
    assert (
        error_of(api.get("/v1/billing/meters/mtr_missing"), 404)["message"]
        == "No such billing.meter: 'mtr_missing'"
    )
    assert error_of(api.get("/v1/billing/meters", params={"status": "gone"}), 400)["param"] == "status"


def test_alerts(api: TestClient, engine: Engine, mirror: dict[str, Any]) -> None:
    other = snapshot_of("billing.alert.triggered")
    other["alert"].update(id="alrt_61SyG00B7WZ01zgkWoldAlrt", title="Another")
    other["alert"]["usage_threshold"].update(meter="mtr_other", filters=None)
    ingest(engine, make_event("billing.alert.triggered", other, created=T0 + 50000))
    alert = recorded("billing.alert.triggered")["data"]["object"]["alert"]
    assert ids(get(api, "/v1/billing/alerts")) == [ALERT, "alrt_61SyG00B7WZ01zgkWoldAlrt"]
    assert get(api, "/v1/billing/alerts", meter=METER)["data"] == [alert]
    assert ids(get(api, "/v1/billing/alerts", customer="cus_TkQ7cW3mJ9xN2a")) == [ALERT]
    assert ids(get(api, "/v1/billing/alerts", alert_type="usage_threshold", meter="mtr_other")) == [
        "alrt_61SyG00B7WZ01zgkWoldAlrt"
    ]
    assert ids(get(api, "/v1/billing/alerts", limit=1, starting_after=ALERT)) == [
        "alrt_61SyG00B7WZ01zgkWoldAlrt"
    ]
    assert get(api, f"/v1/billing/alerts/{ALERT}") == alert
    assert error_of(api.get("/v1/billing/alerts/alrt_missing"), 404)["code"] == "resource_missing"


def test_rendering_templates(api: TestClient, mirror: dict[str, Any]) -> None:
    listed = json.loads(TEMPLATES.read_text())["data"]
    assert get(api, "/v1/invoice_rendering_templates")["data"] == listed  # newest first
    assert ids(get(api, "/v1/invoice_rendering_templates", status="archived")) == [listed[1]["id"]]
    assert get(api, f"/v1/invoice_rendering_templates/{listed[0]['id']}") == listed[0]
    error = error_of(api.get("/v1/invoice_rendering_templates/inrtem_missing"), 404)
    assert error["message"] == "No such invoice_rendering_template: 'inrtem_missing'"


@pytest.mark.parametrize(
    "path",
    [
        "/v1/invoices",
        f"/v1/invoices/{INVOICE_A}/lines",
        "/v1/billing/meters",
        "/v1/billing/alerts",
        "/v1/invoice_rendering_templates",
    ],
)
def test_a_key_is_required(api: TestClient, mirror: dict[str, Any], path: str) -> None:
    response = api.get(path, headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 401 and API_KEY not in response.text


# ---- invoice items learn their invoice from lines ---------------------------------------------


def test_items_on_an_invoice_through_its_lines_are_not_pending(api: TestClient, engine: Engine) -> None:
    template = load_fixture("invoiceitem.created.json")["data"]["object"]
    on_a = "ii_1SyA02B7WZ01zgkWovrg0001"
    ingest(
        engine,
        make_event("invoiceitem.created", template | {"id": on_a, "date": T0 - 60}),
        make_event("invoiceitem.created", template | {"id": "ii_still_pending", "date": T0 - 30}),
        recorded("invoice.updated"),
    )
    assert ids(get(api, "/v1/invoiceitems", pending="true")) == ["ii_still_pending"]
    assert ids(get(api, "/v1/invoiceitems", pending="false")) == [on_a]
    assert ids(get(api, "/v1/invoiceitems", invoice=INVOICE_A)) == [on_a]
    assert get(api, f"/v1/invoiceitems/{on_a}")["invoice"] is None  # the object stays as Stripe sent it
