"""Backfill the mirror from Stripe list pages the user fetched (for offline use; ``billing-mirror sync``
reads Stripe's API itself).

Like everything that changes the mirror, a file becomes an event in the log (a snapshot event,
app.mirror.snapshots, with source ``file``), stored and applied in one transaction by the same
store as webhooks, so ``events export`` and ``replay`` rebuild what it loaded.

* Invoice rendering templates have no events: ``backfill_templates`` loads
  ``GET /v1/invoice_rendering_templates`` output, versioned by each template's own ``version``,
  then by when the file was loaded (archive/unarchive, which do not bump it, are picked up).
* Invoices whose snapshot carried only the first page of lines (``lines.has_more``) are completed by
  ``backfill_lines`` from ``GET /v1/invoices/{id}/lines``: the lines are attributed to the invoice
  version the mirror holds when the file is loaded, and ``lines_incomplete`` is cleared only if that
  version still stands when they are applied.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from app.db.models import Invoice
from app.ingest.apply import DatabaseUnavailable, IngestResult
from app.ingest.store import EventStore
from app.json_text import json_text
from app.mirror.envelope import Event, EventSource
from app.mirror.handlers.base import StripeObject
from app.mirror.outcome import Outcome
from app.mirror.snapshots import LINES_SNAPSHOT_TYPE, snapshot_event
from app.mirror.upsert import VERSION_COLUMNS, table_of


class BackfillError(ValueError):
    """The input cannot be backfilled; the message says why."""


@dataclass(frozen=True)
class StripeList:
    """Objects of one or more consecutive list pages, and whether the last page ended the list."""

    data: list[StripeObject]
    complete: bool


def parse_list(document: Any) -> StripeList:
    """A Stripe list object ``{"object": "list", "data": [...], "has_more": ...}``, or a JSON array of
    such pages in order (as when paging with ``starting_after``)."""
    pages = document if isinstance(document, list) else [document]
    data: list[StripeObject] = []
    complete = True
    for page in pages:
        is_list = isinstance(page, dict) and page.get("object") == "list"
        if not is_list or not isinstance(page.get("data"), list):
            raise BackfillError('Expected a Stripe list object {"object": "list", "data": [...]}')
        data.extend(obj for obj in page["data"] if isinstance(obj, dict))
        complete = not page.get("has_more", False)
    return StripeList(data, complete)


def read_list(path: Path) -> StripeList:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BackfillError(f"Cannot read {path}: {exc}") from None
    return parse_list(document)


@dataclass(frozen=True)
class Loaded:
    """The event a file became, and what became of it."""

    event_id: str
    outcome: str  # applied (something changed) or stale (the mirror held newer versions of all)


def _livemode(objects: list[StripeObject]) -> bool:
    return any(obj.get("livemode") is True for obj in objects)


def _ingest(engine: Engine, event: Event) -> Loaded:
    [result] = EventStore(engine).ingest([event])
    if isinstance(result, DatabaseUnavailable):
        raise BackfillError(f"The database is unavailable: {result}")
    assert isinstance(result, IngestResult)
    if result.outcome == Outcome.FAILED:
        raise BackfillError(f"Event {event.id} is stored as failed: {result.error}")
    return Loaded(event.id, result.outcome.value)


def backfill_templates(
    engine: Engine, templates: list[StripeObject], *, loaded_at: int | None = None
) -> Loaded:
    """One snapshot event of every template of the file, stored and applied."""
    for obj in templates:
        template_id, version = obj.get("id"), obj.get("version")
        if obj.get("object") != "invoice_rendering_template" or not isinstance(template_id, str):
            raise BackfillError(f"Not an invoice_rendering_template: {json_text(obj)[:120]}")
        if not isinstance(version, int) or isinstance(version, bool):
            raise BackfillError(f"Template {template_id} has no integer version")
    event = snapshot_event(
        "invoice_rendering_template",
        templates,
        fetched_at=loaded_at if loaded_at is not None else int(time.time()),
        url="/v1/invoice_rendering_templates",
        origin=EventSource.FILE,
        api_version=None,
        livemode=_livemode(templates),
    )
    return _ingest(engine, event)


@dataclass(frozen=True)
class LinesBackfill:
    invoice: str
    lines: int
    complete: bool  # lines_incomplete is cleared
    event_id: str


def mirrored_invoice_version(engine: Engine, invoice_id: str) -> list[Any] | None:
    """The version of the invoice snapshot the mirror holds, or None if it holds none."""
    invoices = table_of(Invoice)
    with engine.connect() as connection:
        stored = connection.execute(
            select(*(invoices.c[name] for name in VERSION_COLUMNS)).where(invoices.c.id == invoice_id)
        ).first()
    if stored is None or stored.version_precedence < 0:
        return None
    return list(stored)


def backfill_lines(
    engine: Engine, invoice_id: str, page: StripeList, *, loaded_at: int | None = None
) -> LinesBackfill:
    """One ``snapshot.invoice_lines`` event: the lines of ``invoice_id``, attributed to the invoice
    version the mirror holds now (the list was fetched after that snapshot)."""
    for line in page.data:
        if line.get("object") != "line_item" or line.get("invoice") not in (None, invoice_id):
            raise BackfillError(f"Not a line of {invoice_id}: {json_text(line)[:120]}")
    version = mirrored_invoice_version(engine, invoice_id)
    if version is None:
        raise BackfillError(f"Invoice {invoice_id} is not in the mirror yet; its events must arrive first")
    event = snapshot_event(
        "line_item",
        page.data,
        fetched_at=loaded_at if loaded_at is not None else int(time.time()),
        url=f"/v1/invoices/{invoice_id}/lines",
        origin=EventSource.FILE,
        api_version=None,
        livemode=_livemode(page.data),
        has_more=not page.complete,
        data_extra={"invoice": invoice_id, "attributed_to": version},
        event_type=LINES_SNAPSHOT_TYPE,
    )
    loaded = _ingest(engine, event)
    invoices = table_of(Invoice)
    with engine.connect() as connection:
        incomplete = connection.execute(
            select(invoices.c.lines_incomplete).where(invoices.c.id == invoice_id)
        ).scalar()
    return LinesBackfill(invoice_id, len(page.data), incomplete is False, loaded.event_id)
