"""Route an event to its handler, and plan everything storing and applying it will write."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Dialect

from app.apply import PlannedEvent, describe
from app.envelope import Event
from app.handlers import SNAPSHOT_HANDLERS, THIN_HANDLERS
from app.handlers.base import Source
from app.writes import Writes

Apply = Callable[[Writes, Event], None]


def apply_event(writes: Writes, event: Event) -> None:
    """Record the writes of ``event``'s handler; an event type without one records none (ignored)."""
    source = Source(event.id, event.created, event.type)
    if event.thin:
        thin_handler = THIN_HANDLERS.get(event.type)
        if thin_handler is not None:
            thin_handler(writes, event.body, source)
        return
    handler = SNAPSHOT_HANDLERS.get(event.type)
    obj = event.data_object
    if handler is not None and obj is not None:
        handler(writes, obj, source)


def event_row(event: Event, received: Any) -> tuple[Any, ...]:
    """The planned part of the stripe_events row (app.apply.EVENT_COLUMNS), the raw body kept exact;
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
    )


def plan_event(event: Event, dialect: Dialect, received: Any, apply: Apply = apply_event) -> PlannedEvent:
    """``event`` ready for app.apply. A handler that raises plans nothing: the event will be stored
    as failed with the error, and a later delivery of it tries again."""
    writes = Writes(dialect)
    try:
        apply(writes, event)
    except Exception as exc:
        return PlannedEvent(event.id, event_row(event, received), [], error=describe(exc))
    return PlannedEvent(event.id, event_row(event, received), writes.planned)
