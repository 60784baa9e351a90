"""Stripe's form-style query strings (``a[b]=``, ``a[]=``, ``a[0]=``) and the checks of each parameter."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from tests.stripe_server.errors import ApiError

_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_SEGMENT = re.compile(r"\[([^\[\]]*)\]")
_APPEND = ""  # the segment of `a[]=`
RANGE_OPERATORS = ("gt", "gte", "lt", "lte")


def _invalid(name: str, what: str) -> ApiError:
    return ApiError(400, f"Invalid {what}: {name}", param=name)


def parse_query(raw: str) -> dict[str, Any]:
    """Percent-decode and nest: ``created[gte]=1`` -> {"created": {"gte": "1"}}, ``expand[0]=x`` and
    ``expand[]=x`` -> {"expand": ["x"]}. Values stay strings; each parameter's check converts them."""
    root: dict[str, Any] = {}
    for part in raw.split("&"):
        if not part:
            continue
        raw_name, _, raw_value = part.partition("=")
        name, value = unquote_plus(raw_name), unquote_plus(raw_value)
        match = _KEY.match(name)
        path = [name] if match is None else [match.group(1), *_SEGMENT.findall(match.group(2))]
        _insert(root, path, value, name)
    return {key: _finish(value) for key, value in root.items()}


def _insert(container: dict[str, Any] | list[Any], path: list[str], value: str, name: str) -> None:
    head, rest = path[0], path[1:]
    if isinstance(container, list):
        if head != _APPEND:
            raise _invalid(name, "array")
        if not rest:
            container.append(value)
            return
        child: dict[str, Any] | list[Any] = [] if rest[0] == _APPEND else {}
        container.append(child)
        _insert(child, rest, value, name)
        return
    if not rest:
        if isinstance(container.get(head), dict | list):
            raise _invalid(name, "hash")
        container[head] = value
        return
    existing = container.get(head)
    wanted = list if rest[0] == _APPEND else dict
    if existing is None:
        existing = wanted()
        container[head] = existing
    elif not isinstance(existing, wanted):
        raise _invalid(name, "array" if wanted is list else "hash")
    _insert(existing, rest, value, name)


def _finish(value: Any) -> Any:
    """Hashes indexed 0..n (``a[0]=``, ``a[1]=``) become lists, in index order."""
    if isinstance(value, list):
        return [_finish(item) for item in value]
    if isinstance(value, dict):
        if value and all(key.isdigit() for key in value):
            return [_finish(value[key]) for key in sorted(value, key=int)]
        return {key: _finish(item) for key, item in value.items()}
    return value


@dataclass(frozen=True)
class TimeRange:
    """A `created`-style filter as a half-open interval of unix seconds; None is unbounded."""

    since: int | None = None
    until: int | None = None

    def contains(self, value: int | None) -> bool:
        if value is None:
            return False
        return (self.since is None or value >= self.since) and (self.until is None or value < self.until)

    def narrowed(self, since: int) -> TimeRange:
        return TimeRange(since if self.since is None else max(self.since, since), self.until)


class Params:
    """The parsed parameters of one request, checked against the names its endpoint accepts."""

    def __init__(self, values: dict[str, Any], accepted: Iterable[str]) -> None:
        accepted_names = set(accepted)
        for name in values:
            if name not in accepted_names:
                raise ApiError(
                    400, f"Received unknown parameter: {name}", code="parameter_unknown", param=name
                )
        self.values = values

    def __contains__(self, name: str) -> bool:
        return name in self.values

    def string(self, name: str) -> str | None:
        value = self.values.get(name)
        if value is None:
            return None
        if not isinstance(value, str):
            raise ApiError(400, f"Invalid string: {name}", code="parameter_invalid_string", param=name)
        if value == "":
            raise ApiError(
                400,
                f"You passed an empty string for '{name}'. We assume empty values are an attempt to unset a "
                "parameter; however '{name}' cannot be unset.",
                code="parameter_invalid_empty",
                param=name,
            )
        return value

    def choice(self, name: str, choices: tuple[str, ...]) -> str | None:
        value = self.string(name)
        if value is not None and value not in choices:
            raise ApiError(
                400,
                f"Invalid {name}: must be one of {', '.join(choices)}",
                code="parameter_invalid_string",
                param=name,
            )
        return value

    def boolean(self, name: str) -> bool | None:
        value = self.string(name)
        if value is None:
            return None
        if value not in ("true", "false"):
            raise ApiError(400, f"Invalid boolean: {value}", code="parameter_invalid_boolean", param=name)
        return value == "true"

    def integer(self, name: str) -> int | None:
        return _integer(self.values.get(name), name)

    def strings(self, name: str) -> list[str] | None:
        value = self.values.get(name)
        if value is None:
            return None
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
            raise _invalid(name, "array")
        return items

    def hash(self, name: str, keys: tuple[str, ...]) -> dict[str, str] | None:
        value = self.values.get(name)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise _invalid(name, "hash")
        for key, item in value.items():
            if key not in keys:
                raise ApiError(
                    400,
                    f"Received unknown parameter: {name}[{key}]",
                    code="parameter_unknown",
                    param=f"{name}[{key}]",
                )
            if not isinstance(item, str):
                raise _invalid(f"{name}[{key}]", "string")
        return dict(value)

    def time_range(self, name: str) -> TimeRange | None:
        """An integer (exact second) or ``{gt, gte, lt, lte}``, as a half-open interval."""
        value = self.values.get(name)
        if value is None:
            return None
        if not isinstance(value, dict):
            exact = _integer(value, name)
            assert exact is not None
            return TimeRange(exact, exact + 1)
        bounds = self.hash(name, RANGE_OPERATORS)
        assert bounds is not None
        since: int | None = None
        until: int | None = None
        for operator, text in bounds.items():
            number = _integer(text, f"{name}[{operator}]")
            assert number is not None
            low = {"gt": number + 1, "gte": number}.get(operator)
            high = {"lt": number, "lte": number + 1}.get(operator)
            if low is not None:
                since = low if since is None else max(since, low)
            if high is not None:
                until = high if until is None else min(until, high)
        return TimeRange(since, until)


def _integer(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(r"-?\d+", value):
        raise ApiError(400, f"Invalid integer: {value}", code="parameter_invalid_integer", param=name)
    return int(value)
