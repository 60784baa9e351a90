"""Stripe-style request parameters: deepObject query strings (``created[gte]=1``, ``payment[type]=x``)
turned into nested values, then checked against a schema of parameter specs.

The same schema serves the HTTP API (values come from the query string) and the CLI (values come from
options), so both front ends accept and reject exactly the same things.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import unquote_to_bytes

from app.mirror.envelope import INT64
from app.read.errors import InvalidRequest

RawValue = str | list[str] | dict[str, "RawValue"]
_KEY = re.compile(r"([^\[\]]+)((?:\[[^\[\]]*\])*)")
# [0-9], not \d: \d and int() also take other scripts' digits (U+FF15, U+0665), int() "+5", " 5", "1_0".
_INTEGER = re.compile(r"-?[0-9]+")
# Every stored integer (unix times included) is a signed 64-bit one: PostgreSQL BIGINT, SQLite INTEGER.
INT64_MIN, INT64_MAX = INT64.start, INT64.stop - 1
_INT64_DIGITS = len(str(INT64_MAX))
NOT_UTF8 = "is not valid UTF-8 once percent-decoded"


def why_never_stored(text: str) -> str | None:
    """Why no stored id or value can equal ``text``, or None: PostgreSQL text cannot hold NUL (it
    refuses the query), and a lone surrogate has no UTF-8 form (neither driver can send it)."""
    if "\x00" in text:
        return "cannot contain the NUL character (%00)"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    return None


def _query_fields(query: str | bytes) -> Iterator[tuple[bytes, bytes]]:
    """(name, value) of each ``name=value`` of a query string, percent-decoded to bytes ("+" is a space)."""
    raw = query if isinstance(query, bytes) else query.encode("utf-8", "surrogatepass")
    for pair in raw.split(b"&"):
        if pair:
            name, _, value = pair.replace(b"+", b" ").partition(b"=")
            yield unquote_to_bytes(name), unquote_to_bytes(value)


def _utf8(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def parse_query_string(query: str | bytes) -> dict[str, RawValue]:
    """``a=1&b[c]=2`` -> ``{"a": "1", "b": {"c": "2"}}``. Arrays come in every encoding Stripe's
    libraries send: ``a[]=x&a[]=y`` and a repeated ``a=x&a=y`` give a list, ``a[0]=x&a[1]=y`` a
    mapping of indexes (an Array spec reads all three; any other spec refuses a value given twice).
    Names and values must be UTF-8 once percent-decoded: one that is not is refused, not mangled."""
    nested: dict[str, RawValue] = {}
    for raw_key, raw_value in _query_fields(query):
        key = _utf8(raw_key)
        if key is None:
            shown = raw_key.decode("utf-8", "replace")
            raise InvalidRequest(
                f"Invalid parameter name: {shown} {NOT_UTF8}.", param=shown, code="parameter_unknown"
            )
        match = _KEY.fullmatch(key)
        if match is None:
            raise InvalidRequest(f"Invalid parameter name: {key}", param=key, code="parameter_unknown")
        path = [match.group(1), *re.findall(r"\[([^\[\]]*)\]", match.group(2))]
        appending = len(path) > 1 and path[-1] == ""
        if appending:
            path = path[:-1]
        value = _utf8(raw_value)
        if value is None:
            name = display_name(path)
            raise InvalidRequest(f"Invalid {name}: the value {NOT_UTF8}.", param=name)
        node: dict[str, RawValue] = nested
        for depth, segment in enumerate(path[:-1]):
            child = node.setdefault(segment, {})
            if not isinstance(child, dict):
                raise _conflict(path[: depth + 1])
            node = child
        last = path[-1]
        existing = node.get(last)
        if existing is None:
            node[last] = [value] if appending else value
        elif isinstance(existing, list):
            existing.append(value)
        elif isinstance(existing, str):  # given twice: a list, which only an Array accepts
            node[last] = [existing, value]
        else:
            raise _conflict(path)
    return nested


def _conflict(path: Sequence[str]) -> InvalidRequest:
    name = display_name(path)
    return InvalidRequest(
        f"Parameter {name} was given more than once, or both as a value and an object.", param=name
    )


def display_name(path: Sequence[str]) -> str:
    """("payment", "type") -> "payment[type]", the way Stripe names nested parameters."""
    return path[0] + "".join(f"[{segment}]" for segment in path[1:])


class ParamSpec(Protocol):
    def parse(self, name: str, raw: Any) -> Any:
        """Check one raw value (a string, or a mapping for nested parameters) and convert it."""


def _require_text(name: str, raw: Any, kind: str) -> str:
    if isinstance(raw, list):
        raise InvalidRequest(
            f"Parameter {name} was given more than once, or both as a value and an object.", param=name
        )
    if isinstance(raw, Mapping):
        raise InvalidRequest(f"Invalid {name}: expected {kind}, not an object", param=name)
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise InvalidRequest(f"Invalid {name}: expected {kind}", param=name)
    text = str(raw)
    if text == "":
        raise InvalidRequest(
            f"You passed an empty string for '{name}'. Leave the parameter out instead.",
            param=name,
            code="parameter_invalid_empty",
        )
    problem = why_never_stored(text)
    if problem is not None:
        raise InvalidRequest(f"Invalid {name}: a value {problem}.", param=name)
    return text


@dataclass(frozen=True)
class Text:
    def parse(self, name: str, raw: Any) -> str:
        return _require_text(name, raw, "a string")


@dataclass(frozen=True)
class Integer:
    """ASCII digits with an optional leading "-", nothing else int() reads, within 64 bits;
    ``minimum`` and ``maximum`` narrow the range further (``limit``)."""

    minimum: int = INT64_MIN
    maximum: int = INT64_MAX

    def parse(self, name: str, raw: Any) -> int:
        text = _require_text(name, raw, "an integer")
        if not _INTEGER.fullmatch(text):
            raise InvalidRequest(f"Invalid integer: {text}", param=name, code="parameter_invalid_integer")
        # Digits counted before int(): no 64-bit integer has more, and int() refuses 4,300 or more.
        value = int(text) if len(text.lstrip("-").lstrip("0")) <= _INT64_DIGITS else None
        if value is None or not INT64_MIN <= value <= INT64_MAX:
            raise InvalidRequest(
                f"Invalid integer: {text} is out of range (from {INT64_MIN} to {INT64_MAX})",
                param=name,
                code="parameter_invalid_integer",
            )
        if not self.minimum <= value <= self.maximum:
            raise InvalidRequest(
                f"Invalid {name}: must be between {self.minimum} and {self.maximum}", param=name
            )
        return value


@dataclass(frozen=True)
class Boolean:
    def parse(self, name: str, raw: Any) -> bool:
        if isinstance(raw, bool):
            return raw
        text = _require_text(name, raw, "a boolean")
        if text not in ("true", "false"):
            raise InvalidRequest(f"Invalid boolean: {text} (use true or false)", param=name)
        return text == "true"


@dataclass(frozen=True)
class Choice:
    values: tuple[str, ...]

    def parse(self, name: str, raw: Any) -> str:
        text = _require_text(name, raw, "a string")
        if text not in self.values:
            raise InvalidRequest(f"Invalid {name}: must be one of {', '.join(self.values)}", param=name)
        return text


@dataclass(frozen=True)
class TimeRange:
    """A unix-time filter: ``created=N`` (exact) or any of ``created[gt|gte|lt|lte]``."""

    gt: int | None = None
    gte: int | None = None
    lt: int | None = None
    lte: int | None = None

    @classmethod
    def exactly(cls, value: int) -> TimeRange:
        return cls(gte=value, lte=value)


RANGE_OPERATORS = ("gt", "gte", "lt", "lte")


@dataclass(frozen=True)
class Timestamp:
    def parse(self, name: str, raw: Any) -> TimeRange:
        if not isinstance(raw, Mapping):
            return TimeRange.exactly(Integer().parse(name, raw))
        unknown = [key for key in raw if key not in RANGE_OPERATORS]
        if unknown:
            raise unknown_parameter(f"{name}[{unknown[0]}]")
        if not raw:
            raise InvalidRequest(f"Invalid {name}: give an integer or {name}[gte] etc.", param=name)
        bounds = {key: Integer().parse(f"{name}[{key}]", value) for key, value in raw.items()}
        return TimeRange(**bounds)


@dataclass(frozen=True)
class Object:
    """A nested parameter such as ``payment[type]``; ``required`` names the keys it must have."""

    fields: Mapping[str, ParamSpec]
    required: tuple[str, ...] = ()

    def parse(self, name: str, raw: Any) -> dict[str, Any]:
        if not isinstance(raw, Mapping):
            first = next(iter(self.fields))
            raise InvalidRequest(f"Invalid {name}: expected an object such as {name}[{first}]", param=name)
        return parse_params(raw, self.fields, prefix=name, required=self.required)


@dataclass(frozen=True)
class Array:
    """An array parameter: ``name[]=a&name[]=b``, ``name[0]=a&name[1]=b``, or ``name=a`` repeated."""

    item: ParamSpec
    max_items: int | None = None

    def parse(self, name: str, raw: Any) -> list[Any]:
        if isinstance(raw, Mapping):
            if not all(isinstance(key, str) and key.isascii() and key.isdigit() for key in raw):
                raise InvalidRequest(
                    f"Invalid array {name}: use {name}[]=value or {name}[0]=value", param=name
                )
            # By number, compared as digit strings: int() refuses an index of 4,300 digits or more.
            by_number = sorted(raw, key=lambda index: (len(index.lstrip("0")), index.lstrip("0")))
            values = [raw[key] for key in by_number]
        else:
            values = raw if isinstance(raw, list) else [raw]
        if self.max_items is not None and len(values) > self.max_items:
            raise InvalidRequest(f"You may pass at most {self.max_items} values for {name}.", param=name)
        return [self.item.parse(name, value) for value in values]


@dataclass(frozen=True)
class Expand:
    """``expand``: paths an endpoint can expand; any other is refused, naming it, as Stripe does."""

    paths: frozenset[str] = frozenset()

    def parse(self, name: str, raw: Any) -> frozenset[str]:
        wanted = Array(Text()).parse(name, raw)
        for path in wanted:
            if path not in self.paths:
                raise InvalidRequest(f"This property cannot be expanded ({path}).", param=name)
        return frozenset(wanted)


def unknown_parameter(name: str) -> InvalidRequest:
    return InvalidRequest(f"Received unknown parameter: {name}", param=name, code="parameter_unknown")


def parse_params(
    raw: Mapping[str, Any],
    schema: Mapping[str, ParamSpec],
    *,
    prefix: str | None = None,
    required: Sequence[str] = (),
) -> dict[str, Any]:
    """Check every given parameter against ``schema``; parameters left out are absent from the result."""
    qualified = (lambda key: f"{prefix}[{key}]") if prefix else (lambda key: key)
    for key in raw:
        if key not in schema:
            raise unknown_parameter(qualified(key))
    for key in required:
        if key not in raw:
            raise InvalidRequest(
                f"Missing required param: {qualified(key)}.", param=qualified(key), code="parameter_missing"
            )
    return {key: schema[key].parse(qualified(key), value) for key, value in raw.items()}


# Every list endpoint takes these, on top of its own filters.
MAX_LIMIT = 100
DEFAULT_LIMIT = 10
PAGING_PARAMS: Mapping[str, ParamSpec] = {
    "limit": Integer(1, MAX_LIMIT),
    "starting_after": Text(),
    "ending_before": Text(),
}


@dataclass(frozen=True)
class PageRequest:
    limit: int = DEFAULT_LIMIT
    starting_after: str | None = None
    ending_before: str | None = None


@dataclass(frozen=True)
class ListRequest:
    """A checked list request: the page wanted and the resource's own filters."""

    page: PageRequest
    filters: Mapping[str, Any] = field(default_factory=dict)
    account: str | None = None  # the Stripe-Account the request is made for (None: the platform)


def parse_list_request(raw: Mapping[str, Any], filters: Mapping[str, ParamSpec]) -> ListRequest:
    values = parse_params(raw, {**filters, **PAGING_PARAMS})
    if "starting_after" in values and "ending_before" in values:
        raise InvalidRequest(
            "You may only specify one of these parameters: starting_after, ending_before.",
            param="ending_before",
        )
    page = PageRequest(
        limit=values.pop("limit", DEFAULT_LIMIT),
        starting_after=values.pop("starting_after", None),
        ending_before=values.pop("ending_before", None),
    )
    return ListRequest(page=page, filters=values)
