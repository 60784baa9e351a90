"""Unix timestamps to and from text: the one parser and the one formatter of times.

A leaf: it imports nothing from app, so every layer may use it.
"""

from __future__ import annotations

from datetime import UTC, datetime


def parse_time(value: str, *, strict: bool = False) -> int:
    """Unix seconds, or an ISO 8601 date or date-time (UTC unless it has an offset).

    ``strict``: only an ISO 8601 date or date-time exactly as given (an event's RFC 3339 field), no
    unix seconds and no surrounding blanks. Raises ValueError for anything else.
    """
    text = value if strict else value.strip()
    if not strict and text.lstrip("-").isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        kinds = (
            "an ISO 8601 date or date-time" if strict else "unix seconds nor an ISO 8601 date or date-time"
        )
        raise ValueError(f"{value!r} is {'not' if strict else 'neither'} {kinds}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def format_time(seconds: int, *, zulu: bool = False) -> str:
    """``2026-01-01 00:00:00`` in UTC; ``zulu`` appends the Z that says so."""
    text = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")
    return f"{text}Z" if zulu else text
