"""Stripe-style parameter parsing, without a database: the same checks serve the API and the CLI."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from app.read.errors import InvalidRequest
from app.read.params import PageRequest, TimeRange, parse_list_request, parse_query_string
from app.read.resources import events, invoice_items, invoice_payments


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


# ---- strictness: integers, NUL, UTF-8 ---------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["\uff15", "\u0665", "\u096b", "+5", " 5", "5 ", "5\n", "\t5", "5.0", "0x5", "1_0", "5e0", "--5", "-"],
)
def test_integers_are_ascii_digits_only(value: str) -> None:
    for key in ("limit", "created", "created[gte]"):
        with pytest.raises(InvalidRequest) as caught:
            parse_payments(f"{key}={quote(value)}")
        assert (caught.value.param, caught.value.code) == (key, "parameter_invalid_integer")


@pytest.mark.parametrize("value", [str(2**63), str(-(2**63) - 1), str(10**30), "9" * 5000])
def test_integers_beyond_64_bits_are_invalid_integers(value: str) -> None:
    for query in (f"created={value}", f"created[lt]={value}", f"limit={value}"):
        with pytest.raises(InvalidRequest) as caught:
            parse_payments(query)
        assert caught.value.code == "parameter_invalid_integer", query
        assert caught.value.message.startswith("Invalid integer"), query


def test_the_64_bit_bounds_and_leading_zeros_are_integers() -> None:
    request = parse_payments(f"created[gte]={-(2**63)}&created[lte]={2**63 - 1}&limit=007")
    assert request.filters["created"] == TimeRange(gte=-(2**63), lte=2**63 - 1)
    assert request.page.limit == 7
    many_zeros = parse_payments(f"created=-{'0' * 30}1&limit={'0' * 30}100")  # leading zeros are not digits
    assert (many_zeros.filters["created"], many_zeros.page.limit) == (TimeRange.exactly(-1), 100)


@pytest.mark.parametrize(("value", "expected"), [(True, True), ("true", True), ("false", False)])
def test_booleans_are_exactly_true_or_false(value: object, expected: bool) -> None:
    assert parse_list_request({"pending": value}, invoice_items.FILTERS).filters["pending"] is expected


@pytest.mark.parametrize("value", ["True", "FALSE", " true", "true ", "1", "yes"])
def test_other_booleans_are_refused(value: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_list_request({"pending": value}, invoice_items.FILTERS)
    assert caught.value.param == "pending"


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("invoice=in_%00", "invoice"),
        ("starting_after=%00", "starting_after"),
        ("status=paid%00", "status"),
        ("payment[type]=charge&payment[charge]=ch%00", "payment[charge]"),
        ("created=%001", "created"),
    ],
)
def test_nul_is_refused_naming_the_parameter(query: str, param: str) -> None:
    with pytest.raises(InvalidRequest, match="NUL") as caught:
        parse_payments(query)
    assert (caught.value.status, caught.value.param) == (400, param)


def test_a_lone_surrogate_from_the_terminal_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="UTF-8") as caught:
        parse_list_request({"invoice": "in_\udc80"}, invoice_payments.FILTERS)
    assert caught.value.param == "invoice"


@pytest.mark.parametrize(
    ("query", "param"),
    [
        (b"invoice=in_\xff", "invoice"),
        (b"invoice=in_%ff", "invoice"),
        (b"invoice=%ed%a0%80", "invoice"),
        (b"payment[charge]=%c3", "payment[charge]"),
        ("invoice=in_\udc80", "invoice"),
    ],
)
def test_values_that_are_not_utf8_are_refused_not_replaced(query: str | bytes, param: str) -> None:
    with pytest.raises(InvalidRequest, match="UTF-8") as caught:
        parse_query_string(query)
    assert caught.value.param == param


def test_a_name_that_is_not_utf8_is_an_unknown_parameter() -> None:
    with pytest.raises(InvalidRequest, match="UTF-8") as caught:
        parse_query_string(b"in%ffvoice=1")
    assert caught.value.code == "parameter_unknown"


def test_a_name_with_a_trailing_newline_is_not_the_name() -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_payments("created[gte]%0A=1")
    assert caught.value.code == "parameter_unknown"


def test_array_indexes_of_any_length_keep_their_order() -> None:
    huge = "9" * 5000
    raw = parse_query_string(f"types[{huge}]=c&types[10]=b&types[09]=a")
    assert parse_list_request(raw, events.FILTERS).filters["types"] == ["a", "b", "c"]
