"""GET /v1/invoice_payments and /v1/invoiceitems: the real app on both databases, filled by events."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine
from starlette.testclient import TestClient

from app.main import create_app
from app.mirror.handlers.base import to_json_text
from app.settings import Settings
from tests.mirror_data import (
    API_KEY,
    BEARER,
    OTHER_API_KEY,
    error_of,
    get,
    ids,
    ingest,
    item,
    item_created,
    item_deleted,
    payment,
    payment_event,
)

T0 = 1_767_225_600  # 2026-01-01 00:00:00 UTC


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
    ingest(engine, [payment_event(obj) for obj in objs])
    return objs


def test_list_envelope_and_objects_exactly_as_sent(api: TestClient, payments: list[dict[str, Any]]) -> None:
    response = api.get("/v1/invoice_payments")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["object", "url", "has_more", "data"]
    assert body["object"] == "list" and body["url"] == "/v1/invoice_payments" and body["has_more"] is False
    assert body["data"] == list(reversed(payments))  # newest first, every field as Stripe sent it
    assert to_json_text(payments[0]) in response.text  # byte for byte, not re-rendered


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
    ingest(engine, [payment_event(obj) for obj in objs])
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


def test_database_down_is_a_stripe_api_error() -> None:
    unreachable = "postgresql://postgres@127.0.0.1:9/nowhere?connect_timeout=2"
    settings = Settings(database_url=unreachable, webhook_secrets=("whsec_x",), api_keys=(API_KEY,))
    with TestClient(create_app(settings), headers=BEARER) as down:
        response = down.get("/v1/invoiceitems")
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "api_error"


def test_unknown_url_answers_like_stripe(api: TestClient) -> None:
    error = error_of(api.get("/v1/customers"), 404)
    assert error["message"] == "Unrecognized request URL (GET: /v1/customers)."


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
    ingest(engine, [item_created(obj) for obj in objs])
    ingest(engine, [item_deleted("ii_05", T0 + 70)])
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
    ingest(engine, [item_deleted("ii_early", T0 + 5)])  # stub tombstone, no snapshot yet
    stub = {"id": "ii_early", "object": "invoiceitem", "deleted": True}
    assert get(api, "/v1/invoiceitems/ii_early") == stub
    assert ids(get(api, "/v1/invoiceitems")) == []
    error = error_of(api.get("/v1/invoiceitems", params={"starting_after": "ii_early"}), 400)
    assert error["code"] == "resource_missing"
