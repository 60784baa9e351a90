"""Plan an event for ingest: its stripe_events row and every guarded write its handler asks for."""

from __future__ import annotations

import contextlib
from typing import Any

from sqlalchemy import Dialect

from app.ingest.apply import PlannedEvent, dead_letter_row, describe
from app.json_text import json_value
from app.mirror.dispatch import Apply, apply_event
from app.mirror.envelope import Event, EventSource
from app.mirror.writes import Writes


def event_row(event: Event, received: Any) -> tuple[Any, ...]:
    """The planned part of the stripe_events row (app.ingest.apply.EVENT_COLUMNS), the raw body kept exact;
    ``received`` is the receipt time as the driver stores it."""
    return (
        event.id,
        event.type,
        event.created,
        event.api_version,
        event.livemode,
        event.account,
        event.thin,
        event.object_id,
        event.raw,
        received,
        event.source,
    )


def plan_event(event: Event, dialect: Dialect, received: Any, apply: Apply = apply_event) -> PlannedEvent:
    """``event`` ready for app.ingest.apply. A handler that raises plans nothing: the event will be stored
    as failed with the error, and a later delivery of it tries again."""
    writes = Writes(dialect)
    try:
        apply(writes, event)
    except Exception as exc:
        return PlannedEvent(event.id, event_row(event, received), [], error=describe(exc))
    return PlannedEvent(event.id, event_row(event, received), writes.planned)


def plan_refused(
    body: bytes, reason: str, message: str, received: Any, source: str = EventSource.WEBHOOK
) -> PlannedEvent:
    """A verified delivery that is not a storable event, planned as its dead letter: the body exactly
    as received, why it was refused, and the id and type it claims when it is a JSON object."""
    claimed: Any = None
    with contextlib.suppress(ValueError, RecursionError):
        claimed = json_value(body)
    event_id = claimed.get("id") if isinstance(claimed, dict) else None
    event_type = claimed.get("type") if isinstance(claimed, dict) else None
    row = dead_letter_row(received, source, reason, message, body, event_id, event_type)
    return PlannedEvent(row[4] or "", (), [], dead_letter=row)
