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


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def parse_duration(value: str) -> int:
    """Seconds of a duration: ``90`` or ``90s``, ``5m``, ``2h``, ``30d`` (one number, one unit).
    Raises ValueError for anything else, or for a duration that is not above zero."""
    text = value.strip().lower()
    unit = text[-1:] if text[-1:] in _DURATION_UNITS else "s"
    number = text[:-1] if text[-1:] in _DURATION_UNITS else text
    if not number.isascii() or not number.isdigit():
        raise ValueError(f"{value!r} is not a duration such as 90s, 5m, 2h or 30d")
    seconds = int(number) * _DURATION_UNITS[unit]
    if seconds <= 0:
        raise ValueError(f"{value!r} is not a duration above zero")
    return seconds


def format_duration(seconds: float) -> str:
    """``1h 02m``, ``4m 05s``, ``12s``: a duration for people."""
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"
