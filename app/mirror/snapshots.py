"""Snapshot events: objects read from Stripe's API (or from a list file), stored and applied like events.

Everything that changes the mirror is in the event log, so that replaying the log rebuilds it. A
page of a Stripe list (or one retrieved object, as a list of one) becomes one event of type
``snapshot.<object>`` (``snapshot.invoice``, ``snapshot.invoiceitem``, ...), whose ``data.object`` is
the list as Stripe sent it and whose ``created`` is Stripe's clock when it was read (the response's
Date header). Its id is the local time of the read and a hash of its content, and the envelope says
where it came from (``origin``) and which request read it.

``snapshot.invoice_lines`` carries lines loaded from a file for one invoice, with the invoice
version they are attributed to (``data.invoice`` and ``data.attributed_to``): lines fetched by sync
travel inside their invoice's snapshot instead (``lines.data`` complete, ``has_more`` false).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from typing import Any

import orjson

from app.json_text import json_text
from app.mirror.envelope import Event, EventSource, event_from_json

SNAPSHOT_PREFIX = "snapshot."
LINES_SNAPSHOT_TYPE = "snapshot.invoice_lines"
SNAPSHOT_ID_PREFIX = "snap_"


def snapshot_type(object_name: str) -> str:
    """The event type of snapshots of one kind of object, e.g. ``snapshot.invoice``."""
    return SNAPSHOT_PREFIX + object_name


def is_snapshot(event_type: str) -> bool:
    return event_type.startswith(SNAPSHOT_PREFIX)


def _text(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # integers past 64 bits: the standard encoder, as for every stored payload
        return json_text(value)


def snapshot_event(
    object_name: str,
    objects: Sequence[dict[str, Any]],
    *,
    fetched_at: int,
    url: str,
    origin: EventSource,
    api_version: str | None,
    livemode: bool,
    account: str | None = None,
    request_id: str | None = None,
    has_more: bool = False,
    data_extra: dict[str, Any] | None = None,
    event_type: str | None = None,
    read_at_ns: int | None = None,
) -> Event:
    """The snapshot event of ``objects`` (as Stripe sent them), read at ``fetched_at`` (unix seconds,
    Stripe's clock) from ``url``; ``read_at_ns`` is the local time of the read (now by default)."""
    kind = event_type or snapshot_type(object_name)
    listed = {"object": "list", "url": url, "has_more": has_more, "data": list(objects)}
    data_text = _text({"object": listed, **(data_extra or {})})
    account_text = _text(account)
    digest = hashlib.blake2b(digest_size=12)
    for part in (kind, str(fetched_at), account_text, data_text):
        digest.update(part.encode())
        digest.update(b"\0")
    # The local time of the read first: ids, the last key of a version, then order two reads of the
    # same Stripe second as they were made (in one process), not by chance.
    read = time.time_ns() if read_at_ns is None else read_at_ns
    event_id = f"{SNAPSHOT_ID_PREFIX}{read:016x}{digest.hexdigest()}"
    # Assembled as text: the page was serialized once, above, and is not serialized again.
    head = {
        "id": event_id,
        "object": "event",
        "type": kind,
        "created": fetched_at,
        "api_version": api_version,
        "livemode": livemode,
        "account": account,
        "origin": str(origin),
        "request": {"id": request_id, "idempotency_key": None},
    }
    raw = _text(head)[:-1] + ',"data":' + data_text + "}"
    body = {**head, "data": {"object": listed, **(data_extra or {})}}
    return event_from_json(body, raw, str(origin))
