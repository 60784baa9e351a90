"""The read API: GET /v1/invoice_payments, /v1/invoiceitems, /v1/invoices (+ /lines),
/v1/billing/meters, /v1/billing/alerts and /v1/invoice_rendering_templates. The real app on both
databases, filled by events, by the recorded deliveries and by the templates backfill."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine
from starlette.testclient import TestClient

from app.json_text import json_text
from app.main import create_app
from app.mirror.envelope import parse_event
from app.recording.backfill import backfill_lines, backfill_templates, read_list
from app.settings import Settings
from tests.support import (
    API_KEY,
    BEARER,
    EVENT_FIXTURES,
    INVOICE_A,
    INVOICE_G,
    METER,
    OTHER_API_KEY,
    T0,
    encode,
    error_of,
    fixture_path,
    get,
    ids,
    ingest_batch,
    ingest_each,
    item,
    item_created,
    item_deleted,
    load_fixture,
    make_event,
    payment,
    payment_event,
    recorded,
    reset,
    snapshot_of,
)

# ---- payments ---------------------------------------------------------------------------------


@pytest.fixture
def payments(engine: Engine) -> list[dict[str, Any]]:
    objs = [
        payment("inpay_01", T0 + 10, invoice="in_A", kind="payment_intent", ref="pi_1"),
        payment("inpay_02", T0 + 20, invoice="in_A", status="open", kind="payment_intent", ref="pi_2"),
        payment("inpay_03", T0 + 30, invoice="in_B", status="canceled", kind="payment_record", ref="pr_3"),
        payment("inpay_04", T0 + 40, invoice="in_B", kind="charge", ref="ch_4"),
        payment("inpay_05", T0 + 50, invoice="in_C", kind="payment_intent", ref="pi_5"),
    ]
    ingest_batch(engine, [payment_event(obj) for obj in objs])
    return objs


def test_list_envelope_and_objects_exactly_as_sent(api: TestClient, payments: list[dict[str, Any]]) -> None:
    response = api.get("/v1/invoice_payments")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["object", "url", "has_more", "data"]
    assert body["object"] == "list" and body["url"] == "/v1/invoice_payments" and body["has_more"] is False
    assert body["data"] == list(reversed(payments))  # newest first, every field as Stripe sent it
    assert json_text(payments[0]) in response.text  # byte for byte, not re-rendered


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"invoice": "in_A"}, ["inpay_02", "inpay_01"]),
        ({"status": "paid"}, ["inpay_05", "inpay_04", "inpay_01"]),
        ({"status": "open"}, ["inpay_02"]),
        ({"status": "canceled"}, ["inpay_03"]),
        ({"payment[type]": "payment_intent"}, ["inpay_05", "inpay_02", "inpay_01"]),
        ({"payment[type]": "payment_intent", "payment[payment_intent]": "pi_2"}, ["inpay_02"]),
        ({"payment[type]": "charge", "payment[charge]": "ch_4"}, ["inpay_04"]),
        ({"payment[type]": "payment_record", "payment[payment_record]": "pr_3"}, ["inpay_03"]),
        ({"payment[type]": "charge", "payment[charge]": "ch_nope"}, []),
        ({"created[gte]": T0 + 20, "created[lt]": T0 + 50}, ["inpay_04", "inpay_03", "inpay_02"]),
        ({"created[gt]": T0 + 20, "created[lte]": T0 + 50}, ["inpay_05", "inpay_04", "inpay_03"]),
        ({"created": T0 + 30}, ["inpay_03"]),
        ({"invoice": "in_B", "status": "paid"}, ["inpay_04"]),
    ],
)
def test_payment_filters(
    api: TestClient, payments: list[dict[str, Any]], params: dict[str, Any], expected: list[str]
) -> None:
    assert ids(get(api, "/v1/invoice_payments", **params)) == expected


def test_payment_id_must_match_the_payment_type(api: TestClient, payments: list[dict[str, Any]]) -> None:
    params = {"payment[type]": "payment_intent", "payment[charge]": "ch_4"}
    response = api.get("/v1/invoice_payments", params=params)
    assert error_of(response, 400)["param"] == "payment[charge]"


def test_retrieve_payment(api: TestClient, payments: list[dict[str, Any]]) -> None:
    assert get(api, "/v1/invoice_payments/inpay_03") == payments[2]
    error = error_of(api.get("/v1/invoice_payments/inpay_missing"), 404)
    assert error == {
        "type": "invalid_request_error",
        "message": "No such invoice_payment: 'inpay_missing'",
        "code": "resource_missing",
        "param": "id",
    }


def test_retrieve_takes_no_filters(api: TestClient, payments: list[dict[str, Any]]) -> None:
    error = error_of(api.get("/v1/invoice_payments/inpay_03", params={"status": "paid"}), 400)
    assert error["code"] == "parameter_unknown" and error["param"] == "status"


# ---- pagination -------------------------------------------------------------------------------


@pytest.fixture
def tied_payments(engine: Engine) -> list[str]:
    """23 payments: 15 created in the same second, the rest around them. Returns ids in list order."""
    objs = [payment(f"inpay_tie_{n:02d}", T0 + 100) for n in range(15)]
    objs += [payment(f"inpay_early_{n}", T0 + 50 - n) for n in range(4)]
    objs += [payment(f"inpay_late_{n}", T0 + 200 + n) for n in range(4)]
    ingest_batch(engine, [payment_event(obj) for obj in objs])
    ordered = sorted(objs, key=lambda obj: (obj["created"], obj["id"]), reverse=True)
    return [obj["id"] for obj in ordered]


def walk(api: TestClient, limit: int, **params: Any) -> tuple[list[str], list[dict[str, Any]]]:
    seen: list[str] = []
    pages: list[dict[str, Any]] = []
    cursor: dict[str, str] = {}
    while True:
        page = get(api, "/v1/invoice_payments", limit=limit, **params, **cursor)
        pages.append(page)
        seen += ids(page)
        if not page["has_more"]:
            return seen, pages
        cursor = {"starting_after": page["data"][-1]["id"]}


@pytest.mark.parametrize("limit", [1, 4, 7, 23, 100])
def test_starting_after_walks_every_object_once_through_ties(
    api: TestClient, tied_payments: list[str], limit: int
) -> None:
    seen, pages = walk(api, limit)
    assert seen == tied_payments
    assert all(len(page["data"]) == limit for page in pages[:-1])


def test_ending_before_walks_back(api: TestClient, tied_payments: list[str]) -> None:
    # From the oldest object backwards, pages of 4 keep newest-first order inside each page.
    cursor = tied_payments[-1]
    collected: list[str] = []
    while True:
        page = get(api, "/v1/invoice_payments", limit=4, ending_before=cursor)
        assert ids(page) == sorted(ids(page), key=tied_payments.index)
        collected = ids(page) + collected
        if not page["has_more"]:
            break
        cursor = page["data"][0]["id"]
    assert collected == tied_payments[:-1]


def test_cursor_inside_a_tie(api: TestClient, tied_payments: list[str]) -> None:
    middle = tied_payments.index("inpay_tie_07")
    after = get(api, "/v1/invoice_payments", limit=3, starting_after="inpay_tie_07")
    assert ids(after) == tied_payments[middle + 1 : middle + 4] and after["has_more"] is True
    before = get(api, "/v1/invoice_payments", limit=3, ending_before="inpay_tie_07")
    assert ids(before) == tied_payments[middle - 3 : middle] and before["has_more"] is True


def test_pages_with_filters_and_has_more(api: TestClient, tied_payments: list[str]) -> None:
    seen, _ = walk(api, 5, **{"created[gte]": T0 + 100, "created[lte]": T0 + 100})
    assert seen == [pid for pid in tied_payments if pid.startswith("inpay_tie_")]
    last = get(api, "/v1/invoice_payments", limit=4, starting_after=tied_payments[-5])
    assert ids(last) == tied_payments[-4:] and last["has_more"] is False


@pytest.mark.parametrize("cursor", ["starting_after", "ending_before"])
def test_unknown_cursor_is_resource_missing(api: TestClient, tied_payments: list[str], cursor: str) -> None:
    error = error_of(api.get("/v1/invoice_payments", params={cursor: "inpay_gone"}), 400)
    assert error["code"] == "resource_missing" and error["param"] == cursor
    assert error["message"] == "No such invoice_payment: 'inpay_gone'"


# ---- parameter errors over HTTP ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "param", "code"),
    [
        ("limit=0", "limit", None),
        ("limit=101", "limit", None),
        ("limit=many", "limit", "parameter_invalid_integer"),
        ("created[gte]=monday", "created[gte]", "parameter_invalid_integer"),
        ("colour=red", "colour", "parameter_unknown"),
        ("status=refunded", "status", None),
        ("payment[payment_intent]=pi_1", "payment[type]", "parameter_missing"),
        ("starting_after=a&ending_before=b", "ending_before", None),
    ],
)
def test_bad_parameters_are_400_with_param(api: TestClient, query: str, param: str, code: str | None) -> None:
    error = error_of(api.get(f"/v1/invoice_payments?{query}"), 400)
    assert error.get("param") == param
    assert error.get("code") == code
    assert error["message"]


@pytest.mark.postgres  # a PostgreSQL URL, on a port where nothing listens
def test_database_down_is_a_stripe_api_error() -> None:
    unreachable = "postgresql://postgres@127.0.0.1:9/nowhere?connect_timeout=2"
    settings = Settings(database_url=unreachable, webhook_secrets=("whsec_x",), api_keys=(API_KEY,))
    with TestClient(create_app(settings), headers=BEARER) as down:
        response = down.get("/v1/invoiceitems")
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "api_error"


def test_unknown_url_answers_like_stripe(api: TestClient) -> None:
    error = error_of(api.get("/v1/customers"), 404)
    assert error["message"].startswith("Unrecognized request URL (GET: /v1/customers). ")


# ---- authentication ---------------------------------------------------------------------------


def test_missing_key(api: TestClient) -> None:
    response = api.get("/v1/invoice_payments", headers={"Authorization": ""})
    error = error_of(response, 401)
    assert "API key" in error["message"]
    assert response.headers["www-authenticate"].startswith("Basic")


def test_wrong_key_is_401_and_never_echoed(api: TestClient) -> None:
    wrong = "bm_wrong_key_abcdef"
    for header in (f"Bearer {wrong}", "Basic " + base64.b64encode(f"{wrong}:".encode()).decode()):
        response = api.get("/v1/invoiceitems", headers={"Authorization": header})
        error = error_of(response, 401)
        assert error["code"] == "api_key_invalid"
        assert wrong not in response.text and API_KEY not in response.text


def test_malformed_authorization_is_401(api: TestClient) -> None:
    for header in ("Token abc", "Bearer", "Basic not-base64!!"):
        error_of(api.get("/v1/invoiceitems", headers={"Authorization": header}), 401)


@pytest.mark.parametrize("key", [API_KEY, OTHER_API_KEY])
def test_bearer_and_basic_with_any_configured_key(api: TestClient, key: str) -> None:
    basic = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
    for header in (f"Bearer {key}", basic):
        response = api.get("/v1/invoiceitems", headers={"Authorization": header})
        assert response.status_code == 200, response.text


def test_api_closed_without_configured_key(make_settings: Callable[..., Settings]) -> None:
    with TestClient(create_app(make_settings(api_keys=())), headers=BEARER) as closed:
        for path in ("/v1/invoice_payments", "/v1/invoiceitems/ii_1"):
            response = closed.get(path)
            error = error_of(response, 401)
            assert error["code"] == "api_closed"
            assert "BILLING_MIRROR_API_KEYS" in error["message"]


# ---- invoice items ----------------------------------------------------------------------------


@pytest.fixture
def items(engine: Engine) -> list[dict[str, Any]]:
    objs = [
        item("ii_01", T0 + 10, customer="cus_A", invoice="in_A"),
        item("ii_02", T0 + 20, customer="cus_A", invoice=None),
        item("ii_03", T0 + 30, customer="cus_B", invoice="in_B"),
        item("ii_04", T0 + 40, customer="cus_B", invoice=None),
        item("ii_05", T0 + 50, customer="cus_A", invoice=None),
        item("ii_06", T0 + 60, customer="cus_A", invoice="in_A"),
    ]
    ingest_batch(engine, [item_created(obj) for obj in objs])
    ingest_batch(engine, [item_deleted("ii_05", T0 + 70)])
    return objs


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, ["ii_06", "ii_04", "ii_03", "ii_02", "ii_01"]),
        ({"customer": "cus_A"}, ["ii_06", "ii_02", "ii_01"]),
        ({"invoice": "in_A"}, ["ii_06", "ii_01"]),
        ({"pending": "true"}, ["ii_04", "ii_02"]),
        ({"pending": "false"}, ["ii_06", "ii_03", "ii_01"]),
        ({"customer": "cus_A", "pending": "true"}, ["ii_02"]),
        ({"created": T0 + 30}, ["ii_03"]),
        ({"created[gte]": T0 + 20, "created[lt]": T0 + 60}, ["ii_04", "ii_03", "ii_02"]),
        ({"customer": "cus_B", "created[gt]": T0 + 30}, ["ii_04"]),
        ({"customer": "cus_nobody"}, []),
    ],
)
def test_item_filters_leave_deleted_items_out(
    api: TestClient, items: list[dict[str, Any]], params: dict[str, Any], expected: list[str]
) -> None:
    body = get(api, "/v1/invoiceitems", **params)
    assert body["url"] == "/v1/invoiceitems"
    assert ids(body) == expected


def test_item_pages(api: TestClient, items: list[dict[str, Any]]) -> None:
    first = get(api, "/v1/invoiceitems", limit=2)
    assert ids(first) == ["ii_06", "ii_04"] and first["has_more"] is True
    second = get(api, "/v1/invoiceitems", limit=2, starting_after="ii_04")
    assert ids(second) == ["ii_03", "ii_02"] and second["has_more"] is True
    # A deleted item still works as a cursor: paging does not break when an item goes away.
    after_deleted = get(api, "/v1/invoiceitems", limit=2, starting_after="ii_05")
    assert ids(after_deleted) == ["ii_04", "ii_03"]


def test_retrieve_items(api: TestClient, items: list[dict[str, Any]]) -> None:
    assert get(api, "/v1/invoiceitems/ii_02") == items[1]
    response = api.get("/v1/invoiceitems/ii_05")
    assert response.status_code == 200
    assert json.loads(response.text) == {"id": "ii_05", "object": "invoiceitem", "deleted": True}
    error = error_of(api.get("/v1/invoiceitems/ii_missing"), 404)
    assert error["code"] == "resource_missing" and error["message"] == "No such invoiceitem: 'ii_missing'"


def test_item_deleted_before_it_was_created_retrieves_as_deleted(api: TestClient, engine: Engine) -> None:
    ingest_batch(engine, [item_deleted("ii_early", T0 + 5)])  # stub tombstone, no snapshot yet
    stub = {"id": "ii_early", "object": "invoiceitem", "deleted": True}
    assert get(api, "/v1/invoiceitems/ii_early") == stub
    assert ids(get(api, "/v1/invoiceitems")) == []
    error = error_of(api.get("/v1/invoiceitems", params={"starting_after": "ii_early"}), 400)
    assert error["code"] == "resource_missing"


# ---- billing resources: the recorded deliveries, the templates backfill -----------------------

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
def recorded_mirror(engine: Engine) -> dict[str, dict[str, Any]]:
    """Every recorded delivery in creation order, one more customer's invoice, the templates.
    Returns the newest snapshot of each invoice."""
    events = [recorded(name) for name in EVENT_FIXTURES]
    events.sort(key=lambda event: (parse_event(encode(event)).created, event["id"]))
    other = snapshot_of("invoice.finalized") | {"id": OTHER, "customer": "cus_other", "created": T0 + 2000}
    other["parent"] = None
    other["lines"] = {"object": "list", "data": [], "has_more": False, "url": f"/v1/invoices/{OTHER}/lines"}
    events.append(make_event("invoice.finalized", other, created=T0 + 2100))
    ingest_each(engine, *events)
    backfill_templates(engine, read_list(TEMPLATES).data)
    newest: dict[str, dict[str, Any]] = {}
    for event in events:
        obj = event.get("data", {}).get("object", {})
        if obj.get("object") == "invoice":
            newest[obj["id"]] = obj
    return newest


# ---- invoices ---------------------------------------------------------------------------------


def test_invoices_newest_first_as_last_sent_without_deleted(
    api: TestClient, recorded_mirror: dict[str, Any]
) -> None:
    body = get(api, "/v1/invoices")
    assert (body["object"], body["url"], body["has_more"]) == ("list", "/v1/invoices", False)
    assert ids(body) == [INVOICE_G, OTHER, D, C, B, INVOICE_A]  # E is deleted
    assert body["data"][-1] == recorded_mirror[INVOICE_A]  # the invoice.paid snapshot, every field


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
    api: TestClient, recorded_mirror: dict[str, Any], params: dict[str, Any], expected: list[str]
) -> None:
    assert ids(get(api, "/v1/invoices", **params)) == expected


def test_invoice_pages_both_ways(api: TestClient, recorded_mirror: dict[str, Any]) -> None:
    first = get(api, "/v1/invoices", limit=2)
    assert ids(first) == [INVOICE_G, OTHER] and first["has_more"] is True
    second = get(api, "/v1/invoices", limit=2, starting_after=OTHER)
    assert ids(second) == [D, C]
    back = get(api, "/v1/invoices", limit=2, ending_before=D)
    assert ids(back) == [INVOICE_G, OTHER]


def test_retrieve_invoice(api: TestClient, recorded_mirror: dict[str, Any]) -> None:
    assert get(api, f"/v1/invoices/{B}") == recorded_mirror[B]
    assert get(api, f"/v1/invoices/{E}") == {"id": E, "object": "invoice", "deleted": True}
    error = error_of(api.get("/v1/invoices/in_missing"), 404)
    assert (error["code"], error["message"]) == ("resource_missing", "No such invoice: 'in_missing'")


def test_invoice_parameters_are_checked(api: TestClient, recorded_mirror: dict[str, Any]) -> None:
    assert error_of(api.get("/v1/invoices", params={"status": "late"}), 400)["param"] == "status"
    assert error_of(api.get("/v1/invoices", params={"collection": "x"}), 400)["code"] == "parameter_unknown"
    assert error_of(api.get("/v1/invoices", params={"limit": 500}), 400)["param"] == "limit"


# ---- lines ------------------------------------------------------------------------------------


def test_lines_in_the_invoice_order(api: TestClient, recorded_mirror: dict[str, Any]) -> None:
    body = get(api, f"/v1/invoices/{INVOICE_A}/lines")
    assert (body["object"], body["url"], body["has_more"]) == (
        "list",
        f"/v1/invoices/{INVOICE_A}/lines",
        False,
    )
    assert body["data"] == recorded_mirror[INVOICE_A]["lines"]["data"]


def test_lines_page_through_the_invoice_order(
    api: TestClient, engine: Engine, recorded_mirror: dict[str, Any]
) -> None:
    backfill_lines(engine, INVOICE_G, read_list(fixture_path("invoice_lines.in_G.json")))
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


def test_lines_of_a_missing_or_deleted_invoice(api: TestClient, recorded_mirror: dict[str, Any]) -> None:
    for invoice_id in ("in_missing", E):
        error = error_of(api.get(f"/v1/invoices/{invoice_id}/lines"), 404)
        assert (error["code"], error["message"]) == ("resource_missing", f"No such invoice: '{invoice_id}'")
    assert get(api, f"/v1/invoices/{OTHER}/lines")["data"] == []
    assert (
        error_of(api.get(f"/v1/invoices/{INVOICE_A}/lines", params={"status": "x"}), 400)["param"] == "status"
    )


# ---- meters, alerts, templates ----------------------------------------------------------------


def test_meters(api: TestClient, recorded_mirror: dict[str, Any]) -> None:
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


def test_alerts(api: TestClient, engine: Engine, recorded_mirror: dict[str, Any]) -> None:
    other = snapshot_of("billing.alert.triggered")
    other["alert"].update(id="alrt_61SyG00B7WZ01zgkWoldAlrt", title="Another")
    other["alert"]["usage_threshold"].update(meter="mtr_other", filters=None)
    ingest_each(engine, make_event("billing.alert.triggered", other, created=T0 + 50000))
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


def test_rendering_templates(api: TestClient, recorded_mirror: dict[str, Any]) -> None:
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
def test_a_key_is_required(api: TestClient, recorded_mirror: dict[str, Any], path: str) -> None:
    response = api.get(path, headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 401 and API_KEY not in response.text


# ---- invoice items learn their invoice from lines ---------------------------------------------


def test_items_on_an_invoice_through_its_lines_are_not_pending(api: TestClient, engine: Engine) -> None:
    template = load_fixture("invoiceitem.created.json")["data"]["object"]
    on_a = "ii_1SyA02B7WZ01zgkWovrg0001"
    ingest_each(
        engine,
        make_event("invoiceitem.created", template | {"id": on_a, "date": T0 - 60}),
        make_event("invoiceitem.created", template | {"id": "ii_still_pending", "date": T0 - 30}),
        recorded("invoice.updated"),
    )
    assert ids(get(api, "/v1/invoiceitems", pending="true")) == ["ii_still_pending"]
    assert ids(get(api, "/v1/invoiceitems", pending="false")) == [on_a]
    assert ids(get(api, "/v1/invoiceitems", invoice=INVOICE_A)) == [on_a]
    # Served as Stripe would answer now: on the invoice whose lines name it, in lists and alone.
    served = get(api, f"/v1/invoiceitems/{on_a}")
    assert served["invoice"] == INVOICE_A
    assert served == template | {"id": on_a, "date": T0 - 60, "invoice": INVOICE_A}
    assert get(api, "/v1/invoiceitems", invoice=INVOICE_A)["data"] == [served]


def test_an_item_taken_off_a_draft_is_pending_again_in_any_order(api: TestClient, engine: Engine) -> None:
    """Stripe's remove_lines with behavior=unassign: a newer complete line list of the draft no longer
    names the item; it is pending again whatever the order the events arrive in."""
    template = load_fixture("invoiceitem.created.json")["data"]["object"]
    on_a = "ii_1SyA02B7WZ01zgkWovrg0001"
    created = make_event("invoiceitem.created", template | {"id": on_a, "date": T0 - 60}, created=T0 - 60)
    with_it = make_event("invoice.updated", snapshot_of("invoice.updated"), created=T0 + 10)
    without = snapshot_of("invoice.updated")
    without["lines"]["data"] = [line for line in without["lines"]["data"] if on_a not in json_text(line)]
    taken_off = make_event("invoice.updated", without, created=T0 + 20)
    for order in (
        (created, with_it, taken_off),
        (taken_off, with_it, created),
        (with_it, taken_off, created),
    ):
        reset(engine)
        ingest_each(engine, *order)
        assert ids(get(api, "/v1/invoiceitems", pending="true")) == [on_a]
        assert ids(get(api, "/v1/invoiceitems", invoice=INVOICE_A)) == []
        assert get(api, f"/v1/invoiceitems/{on_a}")["invoice"] is None
    # Put back on the draft by a newer list: on it again.
    ingest_each(engine, make_event("invoice.updated", snapshot_of("invoice.updated"), created=T0 + 30))
    assert ids(get(api, "/v1/invoiceitems", invoice=INVOICE_A)) == [on_a]
    assert get(api, f"/v1/invoiceitems/{on_a}")["invoice"] == INVOICE_A


def test_an_item_moved_to_another_invoice_follows_the_newest(api: TestClient, engine: Engine) -> None:
    template = load_fixture("invoiceitem.created.json")["data"]["object"]
    on_a = "ii_1SyA02B7WZ01zgkWovrg0001"
    first = make_event("invoice.updated", snapshot_of("invoice.updated"), created=T0 + 10)
    other = snapshot_of("invoice.updated") | {"id": "in_other"}
    other["lines"]["data"] = [line for line in other["lines"]["data"] if on_a in json_text(line)]
    for line in other["lines"]["data"]:
        line["id"] = line["id"] + "_other"
    moved = make_event("invoice.updated", other, created=T0 + 20)
    left_a = snapshot_of("invoice.updated")
    left_a["lines"]["data"] = [line for line in left_a["lines"]["data"] if on_a not in json_text(line)]
    ingest_each(
        engine,
        make_event("invoiceitem.created", template | {"id": on_a}, created=T0 - 60),
        moved,
        first,
        make_event("invoice.updated", left_a, created=T0 + 30),
    )
    assert get(api, f"/v1/invoiceitems/{on_a}")["invoice"] == "in_other"
    assert ids(get(api, "/v1/invoiceitems", invoice="in_other")) == [on_a]
    assert ids(get(api, "/v1/invoiceitems", invoice=INVOICE_A)) == []
    assert ids(get(api, "/v1/invoiceitems", pending="true")) == []
