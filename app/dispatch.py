"""Route one stored event to its handler."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.envelope import Event
from app.handlers import SNAPSHOT_HANDLERS, THIN_HANDLERS
from app.handlers.base import Outcome, Source


def apply_event(session: Session, event: Event) -> Outcome:
    source = Source(event_id=event.id, created=event.created, type=event.type)
    if event.thin:
        thin_handler = THIN_HANDLERS.get(event.type)
        return thin_handler(session, event.body, source) if thin_handler else Outcome.IGNORED
    handler = SNAPSHOT_HANDLERS.get(event.type)
    obj = event.data_object
    if handler is None or obj is None:
        return Outcome.IGNORED
    return handler(session, obj, source)
