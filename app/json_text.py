"""Compact JSON text of a value: stored payloads, JSON columns, re-serialized events, tombstones.

A leaf: it imports nothing from app, so every layer may use it.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def json_text(value: Any) -> str:
    """Compact JSON, non-ASCII kept as is. orjson first (it runs for every mirrored row); the standard
    encoder takes what orjson refuses (integers past 64 bits, non-string keys)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def driver_json_text(value: Any) -> str:
    """The JSON text a driver's JSON wrapper (psycopg's ``Json``: ``obj`` and an optional ``dumps``)
    sends for its value, for statements that carry it as text instead (a bulk upsert's rows, a
    parameter of a pipelined query)."""
    if hasattr(value, "obj"):
        dumps = getattr(value, "dumps", None) or json_text
        text: str = dumps(value.obj)
        return text
    raise TypeError(f"{type(value).__name__} has no JSON form")


def json_value(text: str | bytes) -> Any:
    """The value of JSON text: orjson first (it runs for every delivery and every fetched page); the
    standard parser for what orjson refuses (integers past 64 bits), so that it decides what is and
    is not JSON and words the error (ValueError)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith("depth limit"):  # past 1,024 levels: refused, not recursed into
            raise
        return json.loads(text)
