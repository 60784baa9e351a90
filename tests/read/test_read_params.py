"""Stripe-style parameter parsing, without a database: the same checks serve the API and the CLI."""

from __future__ import annotations

import pytest

from app.read.errors import InvalidRequest
from app.read.params import PageRequest, TimeRange, parse_list_request, parse_query_string
from app.read.resources import invoice_items, invoice_payments


def parse_payments(query: str):  # type: ignore[no-untyped-def]
    return parse_list_request(parse_query_string(query), invoice_payments.FILTERS)


def parse_items(query: str):  # type: ignore[no-untyped-def]
    return parse_list_request(parse_query_string(query), invoice_items.FILTERS)


def test_deep_object_parameters_nest() -> None:
    assert parse_query_string("a=1&payment%5Btype%5D=charge&created[gte]=5&created[lt]=9") == {
        "a": "1",
        "payment": {"type": "charge"},
        "created": {"gte": "5", "lt": "9"},
    }


def test_defaults_and_full_request() -> None:
    assert parse_payments("").page == PageRequest(limit=10)
    request = parse_payments(
        "limit=100&starting_after=inpay_1&invoice=in_1&status=open"
        "&payment[type]=payment_intent&payment[payment_intent]=pi_1&created[gt]=1&created[lte]=2"
    )
    assert request.page == PageRequest(limit=100, starting_after="inpay_1")
    assert request.filters == {
        "invoice": "in_1",
        "status": "open",
        "payment": {"type": "payment_intent", "payment_intent": "pi_1"},
        "created": TimeRange(gt=1, lte=2),
    }


def test_created_as_integer_means_exactly() -> None:
    assert parse_items("created=1767225600").filters["created"] == TimeRange(gte=1767225600, lte=1767225600)


@pytest.mark.parametrize(("query", "expected"), [("pending=true", True), ("pending=false", False)])
def test_booleans(query: str, expected: bool) -> None:
    assert parse_items(query).filters["pending"] is expected


@pytest.mark.parametrize(
    ("query", "param", "code"),
    [
        ("limit=0", "limit", None),
        ("limit=101", "limit", None),
        ("limit=-5", "limit", None),
        ("limit=ten", "limit", "parameter_invalid_integer"),
        ("limit=1.5", "limit", "parameter_invalid_integer"),
        ("colour=red", "colour", "parameter_unknown"),
        ("expand[]=invoice", "expand", "parameter_unknown"),
        ("created[since]=1", "created[since]", "parameter_unknown"),
        ("created[gte]=yesterday", "created[gte]", "parameter_invalid_integer"),
        ("created=soon", "created", "parameter_invalid_integer"),
        ("status=pending", "status", None),
        ("invoice=", "invoice", "parameter_invalid_empty"),
        ("invoice[id]=in_1", "invoice", None),
        ("payment=pi_1", "payment", None),
        ("payment[payment_intent]=pi_1", "payment[type]", "parameter_missing"),
        ("payment[type]=card", "payment[type]", None),
        ("payment[type]=charge&payment[source]=x", "payment[source]", "parameter_unknown"),
        ("starting_after=a&ending_before=b", "ending_before", None),
        ("invoice=a&invoice=b", "invoice", None),
        ("created=1&created[gte]=2", "created", None),
    ],
)
def test_payment_parameter_errors(query: str, param: str, code: str | None) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_payments(query)
    assert caught.value.status == 400
    assert caught.value.param == param
    assert caught.value.code == code


@pytest.mark.parametrize(
    ("query", "param"),
    [("pending=yes", "pending"), ("status=paid", "status"), ("customer=", "customer"), ("limit=0", "limit")],
)
def test_item_parameter_errors(query: str, param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_items(query)
    assert caught.value.param == param


def test_messages_name_the_parameter_like_stripe() -> None:
    with pytest.raises(InvalidRequest, match=r"^Received unknown parameter: colour$"):
        parse_payments("colour=red")
