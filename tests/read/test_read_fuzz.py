"""Property: whatever query string and path id a client sends to any GET route of the read API, the
real app on a real database (SQLite and PostgreSQL) answers below 500, with JSON, and every answer
that is not a 2xx is Stripe's error object.

Requests are drawn from each route's own parameter schema (so that most reach the database), then
spoiled: arbitrary keys and values, brackets, NUL, lone surrogates, non-ASCII digits, integers far
beyond 64 bits, repeated keys, and arbitrary bytes percent-encoded (not always UTF-8)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine
from starlette.testclient import TestClient

from app.read.endpoints import list_schema, nested_list_schema, retrieve_schema
from app.read.params import (
    PAGING_PARAMS,
    Array,
    Boolean,
    Choice,
    Expand,
    Integer,
    Object,
    ParamSpec,
    Text,
    Timestamp,
)
from app.read.registry import NESTED_LISTS, RESOURCES
from tests.support import (
    INVOICE_A,
    T0,
    ingest_batch,
    ingest_each,
    item,
    item_created,
    payment,
    payment_event,
    recorded,
)

# Each GET route (a path with "{}" where an id goes), the parameters it takes besides paging, and
# whether it pages.
ROUTES: dict[str, tuple[Mapping[str, ParamSpec], bool]] = {
    **{resource.url: (list_schema(resource), True) for resource in RESOURCES},
    **{f"{resource.url}/{{}}": (retrieve_schema(resource), False) for resource in RESOURCES},
    **{
        nested.url.replace("{parent_id}", "{}"): (nested_list_schema(nested), True) for nested in NESTED_LISTS
    },
}
KNOWN_IDS = ["inpay_1", "ii_1", INVOICE_A, "evt_1", "cus_A", "in_A"]
BAD_VALUES = ["", "0", "-0", "101", "-1", "1.5", "+1", " 1", "1 ", "0x1", "1_0", "1e3", "invoice.*", "%"]
# Integers at and past the 64-bit bounds, with more digits than int() reads, or not integers at all.
EDGE_INTEGERS = [str(2**63 - 1), str(2**63), str(-(2**63)), str(-(2**63) - 1), str(10**30), "9" * 5000]
EDGE_INTEGERS += ["\uff15", "\u0665", "0" * 30 + "1", "-", "\\"]
# What turns a good value or name bad: NUL, a lone surrogate, non-ASCII digits, spaces, signs, brackets.
SPOILERS = ["\x00", "\ud800", "\udfff", "\uff15", "\u0665", " ", "+", "-", "\n", "[", "]", "[]", "&", "="]
NAME_SUFFIXES = ["[]", "[0]", "[gt]", "[type]", "[x]", "[][]", "[99999999999999999999]", "[", "]"]

# Any code point, lone surrogates and NUL included.
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=20)


@st.composite
def spoiled(draw: st.DrawFn, text: str) -> str:
    """``text`` with a bad character put anywhere in it."""
    at = draw(st.integers(0, len(text)))
    return text[:at] + draw(st.sampled_from(SPOILERS)) + text[at:]


@st.composite
def good_value(draw: st.DrawFn, spec: ParamSpec) -> str | list[tuple[str, str]]:
    """A value ``spec`` accepts, or for nested specs (key suffix, value) pairs, e.g. ("[gte]", "5")."""
    if isinstance(spec, Choice):
        return draw(st.sampled_from(spec.values))
    if isinstance(spec, Boolean):
        return draw(st.sampled_from(["true", "false"]))
    if isinstance(spec, Integer):
        return str(draw(st.integers(spec.minimum, spec.maximum)))
    if isinstance(spec, Timestamp):
        bounds = st.lists(st.sampled_from(["gt", "gte", "lt", "lte"]), min_size=1, unique=True)
        times = st.integers(T0 - 100, T0 + 100).map(str)
        ranged = st.builds(lambda ops, at: [(f"[{op}]", at) for op in ops], bounds, times)
        return draw(st.one_of(times, ranged))
    if isinstance(spec, Expand):
        if not spec.paths:
            return []
        return [("[]", path) for path in draw(st.lists(st.sampled_from(sorted(spec.paths)), max_size=2))]
    if isinstance(spec, Array):
        items = draw(st.lists(good_value(spec.item), min_size=1, max_size=3))
        style = draw(st.sampled_from(["[]", "[n]", "repeated"]))
        keys = {"[]": ["[]"] * len(items), "[n]": [f"[{n}]" for n in range(len(items))]}
        return list(zip(keys.get(style, [""] * len(items)), map(str, items), strict=True))
    if isinstance(spec, Object):
        names = draw(st.lists(st.sampled_from(sorted(spec.fields)), max_size=2, unique=True))
        chosen = [*spec.required, *(name for name in names if name not in spec.required)]
        return [(f"[{name}]", str(draw(good_value(spec.fields[name])))) for name in chosen]
    assert isinstance(spec, Text), spec
    return draw(st.sampled_from(KNOWN_IDS))


@st.composite
def bad_value(draw: st.DrawFn, good: str) -> str:
    """Something in place of ``good``; in place of an integer, mostly integers out of range or not ASCII."""
    if good.lstrip("-").isdigit():
        numbers = st.one_of(st.sampled_from(EDGE_INTEGERS), st.integers().map(str), spoiled(good))
        return draw(st.one_of(numbers, numbers, st.sampled_from(BAD_VALUES), any_text))
    return draw(st.one_of(spoiled(good), st.sampled_from(BAD_VALUES), st.integers().map(str), any_text))


@st.composite
def parameter(draw: st.DrawFn, name: str, spec: ParamSpec) -> list[tuple[str, str]]:
    """One parameter as (key, value) pairs that ``spec`` accepts."""
    value = draw(good_value(spec))
    pairs = [("", value)] if isinstance(value, str) else value
    return [(name + suffix, text) for suffix, text in pairs]


@st.composite
def odd_key(draw: st.DrawFn, names: list[str]) -> str:
    """A parameter name that is not quite one a route takes, or anything at all."""
    name = draw(st.sampled_from(names)) if names else "x"
    return draw(
        st.one_of(st.sampled_from(NAME_SUFFIXES).map(lambda suffix: name + suffix), spoiled(name), any_text)
    )


def percent_encode_every_byte(data: bytes) -> str:
    return "".join(f"%{byte:02X}" for byte in data)


def utf8(text: str) -> bytes:
    """Text as UTF-8, lone surrogates included (as the invalid sequences a client could send)."""
    return text.encode("utf-8", "surrogatepass")


@st.composite
def encoded(draw: st.DrawFn, text: str) -> str:
    """As a library would percent-encode it, or with every byte percent-encoded (the same text)."""
    every_byte = draw(st.integers(0, 5)) == 0
    return percent_encode_every_byte(utf8(text)) if every_byte else quote(utf8(text), safe="[]")


DEFECTS = ["value"] * 4 + ["key", "extra key", "raw bytes value", "raw bytes key", "repeated", "bare key"]


@st.composite
def query_strings(draw: st.DrawFn, schema: Mapping[str, ParamSpec], pages: bool) -> str:
    """Parameters the route takes, with good values; then, most of the time, one defect among them,
    so that it is the defect, not something before it, that the API must answer."""
    names = sorted(schema)
    chosen = draw(st.lists(st.sampled_from(names), max_size=3, unique=True))
    if pages and draw(st.booleans()):  # one paging parameter at most: both cursors are refused together
        chosen.append(draw(st.sampled_from(sorted(PAGING_PARAMS))))
    schema = {**schema, **PAGING_PARAMS}
    pairs = [pair for name in chosen for pair in draw(parameter(name, schema[name]))]
    parts = [f"{draw(encoded(key))}={draw(encoded(value))}" for key, value in pairs]
    defect = draw(st.sampled_from(["none", "none", *DEFECTS]))
    raw_bytes = st.binary(min_size=1, max_size=8).map(percent_encode_every_byte)
    if defect == "repeated" and parts:
        parts.append(parts[0])
    elif defect in ("extra key", "repeated") or (defect != "none" and not parts):
        key, value = draw(odd_key(names)), draw(st.one_of(st.sampled_from(KNOWN_IDS), bad_value("1")))
        parts.append(f"{draw(encoded(key))}={draw(encoded(value))}")
    elif defect != "none":
        at = draw(st.integers(0, len(parts) - 1))
        encoded_key, _, encoded_value = parts[at].partition("=")
        match defect:
            case "value":
                parts[at] = f"{encoded_key}={draw(encoded(draw(bad_value(pairs[at][1]))))}"
            case "key":
                parts[at] = f"{draw(encoded(draw(odd_key(names))))}={encoded_value}"
            case "raw bytes value":
                parts[at] = f"{encoded_key}={draw(raw_bytes)}"
            case "raw bytes key":
                parts[at] = f"{draw(raw_bytes)}={encoded_value}"
            case "bare key":
                parts[at] = encoded_key
    return "&".join(draw(st.permutations(parts)))


path_ids = st.one_of(
    st.sampled_from(KNOWN_IDS),
    st.sampled_from(KNOWN_IDS).flatmap(spoiled).map(lambda text: quote(utf8(text), safe="")),
    any_text.map(lambda text: quote(utf8(text), safe="")),
    st.binary(max_size=12).map(percent_encode_every_byte),
)


@st.composite
def requests(draw: st.DrawFn) -> str:
    """A GET route, an id where it takes one, and a query string."""
    route = draw(st.sampled_from(sorted(ROUTES)))
    url = route.format(draw(path_ids)) if "{}" in route else route
    query = draw(query_strings(*ROUTES[route]))
    return f"{url}?{query}" if query else url


@pytest.fixture
def mirror(engine: Engine) -> None:
    """A few objects, so that ids, cursors and filters reach real rows."""
    ingest_batch(engine, [payment_event(payment("inpay_1", T0)), item_created(item("ii_1", T0))])
    ingest_each(engine, recorded("invoice.created"))


def assert_stripe_error(body: Any) -> None:
    assert isinstance(body, dict) and list(body) == ["error"], body
    error = body["error"]
    assert isinstance(error, dict) and set(error) <= {"type", "message", "code", "param"}, error
    assert error["type"] == "invalid_request_error" and isinstance(error["message"], str), error
    assert isinstance(error.get("code", ""), str) and isinstance(error.get("param", ""), str), error


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=requests())
@example(request="/v1/invoices?created[gte]=9223372036854775808")  # past BIGINT / SQLite INTEGER
@example(request=f"/v1/invoice_payments?limit={'9' * 5000}")  # more digits than int() converts
@example(request="/v1/invoices/in_%00x")  # PostgreSQL text cannot hold NUL
@example(request="/v1/events?types[]=invoice.%00*")
def test_any_request_is_answered_below_500_with_json(api: TestClient, mirror: None, request: str) -> None:
    response = api.get(request)
    assert response.status_code < 500, (request, response.text)
    body = response.json()
    if not 200 <= response.status_code < 300:
        assert_stripe_error(body)
