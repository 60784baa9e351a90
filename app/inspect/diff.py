"""An object's snapshot inside a stored event, and what changed between two snapshots, field by field.

Pure functions of decoded JSON: payloads are whatever was delivered, so nothing here trusts a shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.json_text import json_text

MAX_CHANGES = 200  # per pair of snapshots; the rest is counted, not listed
MAX_VALUE_CHARS = 300
MAX_DEPTH = 32


@dataclass(frozen=True)
class Change:
    path: str  # dotted, lists by index: lines.data[0].amount
    kind: str  # added | removed | changed
    before: str | None  # compact JSON, cut to MAX_VALUE_CHARS
    after: str | None


@dataclass(frozen=True)
class Diff:
    changes: tuple[Change, ...]
    more: int  # changes left out past MAX_CHANGES


def _listed(container: Any, object_id: str) -> dict[str, Any] | None:
    """The element with ``id`` == object_id of a Stripe list object (or a bare list)."""
    data = container.get("data") if isinstance(container, dict) else container
    if not isinstance(data, list):
        return None
    for element in data:
        if isinstance(element, dict) and element.get("id") == object_id:
            return element
    return None


def snapshot_of(body: Any, object_id: str) -> dict[str, Any] | None:
    """The object ``object_id`` as the event body shows it: its ``data.object``, an element of a
    snapshot page, a line of an invoice, a payment embedded in an invoice, or the alert of a
    ``billing.alert.triggered``; None when the body does not show it (a thin event, an invoice whose
    lines no longer list the line)."""
    data = body.get("data") if isinstance(body, dict) else None
    obj = data.get("object") if isinstance(data, dict) else None
    if not isinstance(obj, dict):
        return None
    if obj.get("id") == object_id:
        return obj
    if obj.get("object") == "list":  # a page read by sync, a backfill file
        return _listed(obj, object_id)
    for embedded in ("lines", "payments"):
        found = _listed(obj.get(embedded), object_id)
        if found is not None:
            return found
    alert = obj.get("alert")
    if isinstance(alert, dict) and alert.get("id") == object_id:
        return alert
    return None


def _flatten(value: Any, path: str, out: dict[str, Any], depth: int = 0) -> None:
    if depth >= MAX_DEPTH:  # a payload may nest 1,024 levels: deeper values compare as a whole
        out[path] = value
    elif isinstance(value, dict) and value:
        for key, inner in value.items():
            _flatten(inner, f"{path}.{key}" if path else str(key), out, depth + 1)
    elif isinstance(value, list) and value:
        for index, inner in enumerate(value):
            _flatten(inner, f"{path}[{index}]", out, depth + 1)
    else:
        out[path] = value


def shown(value: Any) -> str:
    try:
        text = json_text(value)
    except RecursionError:
        text = "(nested too deeply to show)"
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 1] + "…"


def diff(before: dict[str, Any], after: dict[str, Any]) -> Diff:
    """Every leaf path added, removed or changed from ``before`` to ``after``, in path order."""
    old: dict[str, Any] = {}
    new: dict[str, Any] = {}
    _flatten(before, "", old)
    _flatten(after, "", new)
    changes: list[Change] = []
    for path in sorted(old.keys() | new.keys()):
        if path not in new:
            changes.append(Change(path, "removed", shown(old[path]), None))
        elif path not in old:
            changes.append(Change(path, "added", None, shown(new[path])))
        elif old[path] != new[path] or type(old[path]) is not type(new[path]):
            changes.append(Change(path, "changed", shown(old[path]), shown(new[path])))
    return Diff(tuple(changes[:MAX_CHANGES]), max(0, len(changes) - MAX_CHANGES))
