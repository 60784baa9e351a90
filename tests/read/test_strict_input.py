"""Input the read API must refuse with Stripe's error object, never a 5xx (both databases): integers
beyond 64 bits, integers that are not plain ASCII digits, NUL and invalid UTF-8 in parameters and in
path ids, and methods or URLs the mirror does not serve."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine
from starlette.testclient import TestClient

from tests.support import (
    INVOICE_A,
    T0,
    error_of,
    ids,
    ingest_batch,
    ingest_each,
    item,
    item_created,
    payment,
    payment_event,
    recorded,
)

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
LISTS_WITH_CREATED = ("/v1/invoice_payments", "/v1/invoiceitems", "/v1/invoices", "/v1/events")
RANGE_KEYS = ("created", "created[gt]", "created[gte]", "created[lt]", "created[lte]")
# Every GET route, with an id that exists in the ``mirror`` fixture below where the route has one.
RETRIEVE_ROUTES = (
    "/v1/invoice_payments/{}",
    "/v1/invoiceitems/{}",
    "/v1/invoices/{}",
    "/v1/invoices/{}/lines",
    "/v1/billing/meters/{}",
    "/v1/billing/alerts/{}",
    "/v1/invoice_rendering_templates/{}",
    "/v1/events/{}",
)
LIST_ROUTES = (
    "/v1/invoice_payments",
    "/v1/invoiceitems",
    "/v1/invoices",
    f"/v1/invoices/{INVOICE_A}/lines",
    "/v1/billing/meters",
    "/v1/billing/alerts",
    "/v1/invoice_rendering_templates",
    "/v1/events",
)


@pytest.fixture
def mirror(engine: Engine) -> None:
    """A payment, an item and an invoice with lines, so that filters and cursors reach real rows."""
    ingest_batch(engine, [payment_event(payment("inpay_1", T0)), item_created(item("ii_1", T0))])
    ingest_each(engine, recorded("invoice.created"))


def refusals(api: TestClient, queries: list[tuple[str, str]], status: int = 400) -> list[dict[str, Any]]:
    """Stripe's error object for each (path, query); a wrong status fails with the whole answer."""
    return [error_of(api.get(f"{path}?{query}" if query else path), status) for path, query in queries]


# ---- integers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [str(INT64_MAX + 1), str(INT64_MIN - 1), str(10**30), "9" * 5000])
def test_created_beyond_64_bits_is_an_invalid_integer(api: TestClient, mirror: None, value: str) -> None:
    queries = [(path, f"{key}={value}") for path in LISTS_WITH_CREATED for key in RANGE_KEYS]
    for (_, query), error in zip(queries, refusals(api, queries), strict=True):
        key = query.partition("=")[0]
        assert (error.get("code"), error.get("param")) == ("parameter_invalid_integer", key), query
        assert error["message"].startswith("Invalid integer"), error


@pytest.mark.parametrize("value", [INT64_MAX, INT64_MIN, -1, 0])
def test_created_at_the_64_bit_bounds_is_answered(api: TestClient, mirror: None, value: int) -> None:
    for path in LISTS_WITH_CREATED:
        for key in RANGE_KEYS:
            response = api.get(path, params={key: value})
            assert response.status_code == 200, (path, key, response.text)
    after_everything = api.get("/v1/invoice_payments", params={"created[lte]": INT64_MAX})
    assert ids(after_everything.json()) == ["inpay_1"]


@pytest.mark.parametrize(
    "value",
    [
        "%EF%BC%95",  # U+FF15, a full-width 5
        "%D9%A5",  # U+0665, an Arabic-Indic 5
        "%E0%A5%AB",  # U+096B, a Devanagari 5
        "%2B5",  # +5
        "%205",  # " 5"
        "5%20",
        "5%0A",  # a trailing newline, which a regex "$" lets through
        "%095",  # a tab
        "5.0",
        "0x5",
        "1_0",
        "5e0",
        "--5",
        "-",
    ],
)
def test_only_ascii_digits_are_integers(api: TestClient, mirror: None, value: str) -> None:
    queries = [("/v1/invoices", f"{key}={value}") for key in ("limit", *RANGE_KEYS)]
    for (_, query), error in zip(queries, refusals(api, queries), strict=True):
        key = query.partition("=")[0]
        assert (error.get("code"), error.get("param")) == ("parameter_invalid_integer", key), query


def test_negative_limits_and_leading_zeros(api: TestClient, mirror: None) -> None:
    [negative] = refusals(api, [("/v1/invoices", "limit=-5")])
    assert negative["param"] == "limit"  # an integer, but out of 1..100
    assert api.get("/v1/invoices?limit=007&created[gte]=-0").status_code == 200


# ---- NUL and invalid UTF-8 --------------------------------------------------------------------

# Every text parameter of every GET route, and a value that is valid but for the NUL in it.
NUL_QUERIES = [
    ("/v1/invoice_payments", "invoice=in_%00", "invoice"),
    ("/v1/invoice_payments", "status=paid%00", "status"),
    ("/v1/invoice_payments", "payment[type]=charge%00", "payment[type]"),
    ("/v1/invoice_payments", "payment[type]=charge&payment[charge]=%00", "payment[charge]"),
    ("/v1/invoiceitems", "customer=cus_%00A", "customer"),
    ("/v1/invoiceitems", "invoice=%00", "invoice"),
    ("/v1/invoiceitems", "pending=true%00", "pending"),
    ("/v1/invoices", "customer=%00", "customer"),
    ("/v1/invoices", "subscription=sub_%00", "subscription"),
    ("/v1/invoices", "status=%00", "status"),
    ("/v1/invoices", "expand[]=data.payments%00", "expand"),
    ("/v1/invoices", "created=1%00", "created"),
    ("/v1/invoices", "created[gte]=%001", "created[gte]"),
    ("/v1/invoices", "limit=5%00", "limit"),
    ("/v1/billing/meters", "status=active%00", "status"),
    ("/v1/billing/alerts", "alert_type=%00", "alert_type"),
    ("/v1/billing/alerts", "meter=mtr_%00", "meter"),
    ("/v1/billing/alerts", "customer=%00", "customer"),
    ("/v1/invoice_rendering_templates", "status=%00", "status"),
    ("/v1/events", "type=invoice.%00", "type"),
    ("/v1/events", "type=invoice.%00*", "type"),
    ("/v1/events", "types[]=a%00", "types"),
    ("/v1/events", "types[0]=invoice.paid&types[1]=%00", "types"),
    ("/v1/invoices/in_1/lines", "starting_after=il_%00", "starting_after"),
    ("/v1/invoices/in_1", "expand[]=%00", "expand"),
] + [
    (path, f"{cursor}=x%00", cursor) for path in LIST_ROUTES for cursor in ("starting_after", "ending_before")
]


def test_nul_in_any_parameter_is_refused_naming_it(api: TestClient, mirror: None) -> None:
    queries = [(path, query) for path, query, _ in NUL_QUERIES]
    for (path, query, param), error in zip(NUL_QUERIES, refusals(api, queries), strict=True):
        assert error.get("param") == param, (path, query, error)
        assert "NUL" in error["message"] or error.get("code") == "parameter_invalid_integer", error


@pytest.mark.parametrize("bad", ["%00", "%FF", "%ED%A0%80", "%C3", "%C0%80"])
def test_a_path_id_that_cannot_exist_is_resource_missing(api: TestClient, mirror: None, bad: str) -> None:
    for route in RETRIEVE_ROUTES:
        error = error_of(api.get(route.format(f"x{bad}y")), 404)
        assert error["code"] == "resource_missing", (route, error)


@pytest.mark.parametrize("bad", ["%FF", "%ED%A0%80", "%C3", "%C0%80", "%F4%90%80%80"])
def test_parameters_that_are_not_utf8_are_refused_naming_them(
    api: TestClient, mirror: None, bad: str
) -> None:
    queries = [
        ("/v1/invoices", f"customer=cus_{bad}"),
        ("/v1/invoices", f"starting_after={bad}"),
        ("/v1/events", f"types[]={bad}"),
        ("/v1/invoiceitems", f"limit={bad}"),
        ("/v1/invoice_payments", f"payment[type]=charge&payment[charge]={bad}"),
    ]
    params = ["customer", "starting_after", "types", "limit", "payment[charge]"]
    for param, error in zip(params, refusals(api, queries), strict=True):
        assert error.get("param") == param and "UTF-8" in error["message"], error
    [unknown_name] = refusals(api, [("/v1/invoices", f"x{bad}=1")])
    assert "UTF-8" in unknown_name["message"]


def test_a_stripe_account_header_with_nul_is_refused(api: TestClient, mirror: None) -> None:
    for path in ("/v1/invoices", "/v1/invoice_payments/inpay_1", f"/v1/invoices/{INVOICE_A}/lines"):
        error = error_of(api.get(path, headers={"Stripe-Account": "acct_\x00x"}), 400)
        assert "Stripe-Account" in error["message"] and "NUL" in error["message"], error


# ---- methods and URLs -------------------------------------------------------------------------

UNSERVED_METHODS = ("POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND")


@pytest.mark.parametrize("method", UNSERVED_METHODS)
def test_a_read_url_with_another_method_is_405_with_allow(api: TestClient, method: str) -> None:
    for path in (*LIST_ROUTES, *(route.format("x_1") for route in RETRIEVE_ROUTES)):
        response = api.request(method, path)
        error = error_of(response, 405)
        assert response.headers["allow"] == "GET, HEAD", (method, path)
        assert error["message"].startswith(f"The mirror only reads: {method} {path} is not served"), error


def test_head_answers_like_get_without_a_body(api: TestClient, mirror: None) -> None:
    for path in ("/v1/invoices", "/v1/invoice_payments/inpay_1"):
        response = api.head(path)
        assert response.status_code == 200 and response.content == b""
        assert response.headers["content-type"] == "application/json"
    assert api.head("/v1/invoices/in_missing").status_code == 404


@pytest.mark.parametrize("method", ["GET", "HEAD", *UNSERVED_METHODS])
def test_an_unknown_url_is_stripes_404_for_any_method(api: TestClient, method: str) -> None:
    for path in ("/v1/customers", "/v1/invoices/in_1/payments", "/v1/", "/v1", "/v1/billing", "/v1/a%0A/b"):
        response = api.request(method, path)
        assert response.status_code == 404, (method, path, response.text)
        if method == "HEAD":
            continue
        error = error_of(response, 404)
        shown = path.replace("%0A", "\n")
        assert error["message"].startswith(f"Unrecognized request URL ({method}: {shown})."), error
