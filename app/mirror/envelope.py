"""Turn verified raw bytes into an Event: the snapshot (v1) envelope or the thin (v2) notification."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from app.json_text import json_value
from app.timestamps import parse_time

SNAPSHOT_OBJECT = "event"
THIN_OBJECT = "v2.core.event"
# Stripe's ids are about 30 characters; an index entry of PostgreSQL holds at most about 2.7 KB.
MAX_ID_CHARS = 255
INT64 = range(-(2**63), 2**63)  # what a stored integer holds: PostgreSQL BIGINT, SQLite INTEGER
# A NUL or a surrogate escape: a parsed string may then hold what no database stores as text.
UNSTORABLE_ESCAPE = re.compile(r"\\u(?:0000|[dD][89abcdefABCDEF])")


class EventSource(StrEnum):
    """How an event reached the database (``stripe_events.source``)."""

    WEBHOOK = "webhook"  # POST /webhooks/stripe
    EVENTS_API = "events_api"  # GET /v1/events, by `sync events`
    SYNC = "sync"  # a list page fetched by `sync` (a snapshot event)
    RECONCILE = "reconcile"  # an object fetched by `reconcile --fix`
    REFRESH = "refresh"  # an object the mirror knew was out of date, fetched again
    FILE = "file"  # a Stripe list the user fetched, loaded by `backfill`
    REPLAY = "replay"  # a recorded event, by `replay --direct`


class EnvelopeError(ValueError):
    """The body verified but is not something we can store as an event."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class Event:
    id: str
    type: str
    created: int
    livemode: bool
    api_version: str | None
    account: str | None
    thin: bool
    raw: str  # the body exactly as received, decoded as UTF-8
    body: dict[str, Any] = field(repr=False, compare=False)
    # How it reached this database (stripe_events.source): a webhook, the Events API, a snapshot
    # fetched by sync, reconcile or refresh, a backfill file, or a replayed recording.
    source: str = field(default="webhook", compare=False)

    # Derived once here: the hot path reads them several times per event.
    data_object: dict[str, Any] | None = field(init=False, repr=False, compare=False)
    object_id: str | None = field(init=False, compare=False)

    def __post_init__(self) -> None:
        body = self.body
        data = body.get("data")
        obj = data.get("object") if isinstance(data, dict) else None
        if not isinstance(obj, dict):
            obj = None
        if self.thin:
            related = body.get("related_object")
            object_id = related.get("id") if isinstance(related, dict) else None
            if not isinstance(object_id, str):
                object_id = None
        elif obj is not None and obj.get("object") == "list":
            # A snapshot of one object (a refresh or a reconcile fix) is about that object.
            listed = obj.get("data")
            only = listed[0] if isinstance(listed, list) and len(listed) == 1 else None
            object_id = only.get("id") if isinstance(only, dict) else None
            if not isinstance(object_id, str):
                object_id = None
        else:
            object_id = obj.get("id") if obj else None
            if not isinstance(object_id, str):
                object_id = None
        object.__setattr__(self, "data_object", obj)
        object.__setattr__(self, "object_id", object_id)


def parse_event(raw: bytes, source: str = "webhook") -> Event:
    """The event in a delivered body, or EnvelopeError (with a kind and a message) saying why the
    body cannot be stored as one; bodies Stripe cannot have sent (not UTF-8, NUL bytes, nesting past
    what a JSON parser takes, lone surrogates) are refused here, the same on every database."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EnvelopeError("invalid_json", f"Body is not UTF-8 JSON: {exc}") from None
    if "\x00" in text:  # UTF-16 or binary: no JSON text holds a raw NUL
        raise EnvelopeError("invalid_json", "Body is not UTF-8 JSON: it contains NUL bytes")
    try:
        body = json_value(text)
    except RecursionError:
        raise EnvelopeError("invalid_json", "Body is JSON nested too deeply to read") from None
    except ValueError as exc:
        raise EnvelopeError("invalid_json", f"Body is not valid JSON: {exc}") from None
    return event_from_json(body, text, source)


def unstorable_text(value: str) -> str | None:
    """Why ``value`` cannot be stored as text on every database (a NUL character, a lone surrogate
    escape), or None."""
    if "\x00" in value:
        return "contains a NUL character"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "contains a lone surrogate (\\ud800-\\udfff), which is not Unicode text"
    return None


def _check_text(name: str, value: str, max_chars: int | None = MAX_ID_CHARS) -> None:
    problem = unstorable_text(value)
    if problem is None and max_chars is not None and len(value) > max_chars:
        problem = f"is longer than {max_chars} characters"
    if problem is not None:
        raise EnvelopeError("invalid_event", f"Event {name!r} {problem}")


def _nothing_unstorable(value: Any) -> None:
    """Refuses a body with a string (or key) no database can store as text: an event Stripe cannot
    have sent must not reach the columns."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            problem = unstorable_text(item)
            if problem is not None:
                raise EnvelopeError("invalid_event", f"Event has a string that {problem}")
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise EnvelopeError("invalid_event", message)


def event_from_json(body: Any, raw: str, source: str = "webhook") -> Event:
    """Validate the envelope of an already decoded body; ``raw`` is kept for byte-exact storage and
    ``source`` says how it arrived."""
    _require(isinstance(body, dict), "Body is JSON but not an object, so not a Stripe event")
    kind = body.get("object")
    _require(kind in (SNAPSHOT_OBJECT, THIN_OBJECT), "Not a Stripe event: 'object' must be 'event'")
    event_id, event_type = body.get("id"), body.get("type")
    _require(isinstance(event_id, str) and event_id != "", "Event has no 'id'")
    _require(isinstance(event_type, str) and event_type != "", "Event has no 'type'")
    _check_text("id", event_id)
    _check_text("type", event_type)
    created = body.get("created")
    thin = kind == THIN_OBJECT
    if thin:
        _require(isinstance(created, str), "Thin event 'created' must be an RFC 3339 string")
        try:
            created = parse_time(created, strict=True)
        except ValueError:
            raise EnvelopeError("invalid_event", "Thin event 'created' is not RFC 3339") from None
    else:
        _require(
            isinstance(created, int) and not isinstance(created, bool),
            "Event 'created' must be a unix timestamp",
        )
        _require(created in INT64, "Event 'created' is out of range for a 64-bit unix timestamp")
        data = body.get("data")
        _require(
            isinstance(data, dict) and isinstance(data.get("object"), dict),
            "Event has no 'data.object'",
        )
    livemode = body.get("livemode", False)
    api_version = body.get("api_version")
    account = body.get("account")
    for name, value in (("api_version", api_version), ("account", account)):
        if isinstance(value, str):
            _check_text(name, value)
    if UNSTORABLE_ESCAPE.search(raw):  # the only way a string of valid UTF-8 JSON gets either
        _nothing_unstorable(body)
    event = Event(
        id=event_id,
        type=event_type,
        created=created,
        livemode=bool(livemode),
        api_version=api_version if isinstance(api_version, str) else None,
        account=account if isinstance(account, str) else None,
        thin=thin,
        raw=raw,
        body=body,
        source=source,
    )
    if event.object_id is not None:
        _check_text("object id", event.object_id)
    return event
