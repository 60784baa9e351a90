"""What every handler shares: its signature, its outcome and small helpers for Stripe values."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson
from sqlalchemy.orm import Session


class Outcome(StrEnum):
    APPLIED = "applied"
    STALE = "stale"  # every row it touched already held a newer version
    IGNORED = "ignored"  # an event type the mirror does not keep
    FAILED = "failed"


@dataclass(frozen=True)
class Source:
    """The event a snapshot came from: handlers version their writes with it."""

    event_id: str
    created: int
    type: str


StripeObject = dict[str, Any]
Handler = Callable[[Session, StripeObject, Source], Outcome]


def outcome_of(written: bool) -> Outcome:
    return Outcome.APPLIED if written else Outcome.STALE


def ref_id(value: Any) -> str | None:
    """An expandable field is an id string, or the object itself when expanded."""
    if type(value) is str:  # the common case first: called for many fields of every row
        return value
    if isinstance(value, dict):
        inner = value.get("id")
        return inner if isinstance(inner, str) else None
    return value if isinstance(value, str) else None


def dig(obj: Any, *path: str) -> Any:
    for name in path:
        if type(obj) is not dict and not isinstance(obj, dict):
            return None
        obj = obj.get(name)
    return obj


def field_of(obj: Any, name: str) -> Any:
    """``dig`` for one level, without the varargs (the column mappings call it for every row)."""
    return obj.get(name) if isinstance(obj, dict) else None


def count_set(mapping: Any) -> int:
    """How many timestamps of a status_transitions object are set; used to break same-second ties."""
    if not isinstance(mapping, dict):
        return 0
    return len(mapping) - list(mapping.values()).count(None)


def to_json_text(obj: Any) -> str:
    """Compact JSON, non-ASCII kept as is (orjson: the payload of every row is written with it)."""
    return orjson.dumps(obj).decode()
