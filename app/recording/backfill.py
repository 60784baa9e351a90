"""Backfill the mirror from Stripe list pages the user fetched (there is no network access here).

* Invoice rendering templates have no events: ``backfill_templates`` upserts them from
  ``GET /v1/invoice_rendering_templates``, versioned by the template's own ``version`` (a re-fetch
  of the same version wins, so archive/unarchive, which do not bump it, are picked up).
* Invoices whose webhook carried only the first page of lines (``lines.has_more``) are completed by
  ``backfill_lines`` from ``GET /v1/invoices/{id}/lines``; the lines are attributed to the invoice
  version the mirror holds, and ``lines_incomplete`` is cleared only if that version still stands.

Functions here take a session and never commit; ``run_in_transaction`` is the one place that does.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, select, tuple_, update
from sqlalchemy.orm import Session

from app.db.models import Invoice, InvoiceLineItem, InvoiceRenderingTemplate
from app.json_text import json_text
from app.mirror.driver_sql import driver_connection
from app.mirror.handlers.base import StripeObject
from app.mirror.handlers.lines import write_lines
from app.mirror.upsert import VERSION_COLUMNS, Version, delete_unlisted, guarded_upsert, table_of
from app.mirror.writes import Writes, execute_writes

BACKFILL_SOURCE = "backfill"
T = TypeVar("T")


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


def template_columns(obj: StripeObject) -> dict[str, Any]:
    return {
        "nickname": obj.get("nickname"),
        "status": obj.get("status"),
        "version": obj.get("version"),
        "livemode": obj.get("livemode"),
        "metadata": obj.get("metadata"),
        "created": obj.get("created"),
        "payload": json_text(obj),
    }


def backfill_templates(session: Session, templates: Iterable[StripeObject]) -> int:
    """Upsert templates; returns how many rows changed (an older version than the mirror's is skipped)."""
    writes = Writes(session.get_bind().dialect)
    for obj in templates:
        template_id, version = obj.get("id"), obj.get("version")
        if obj.get("object") != "invoice_rendering_template" or not isinstance(template_id, str):
            raise BackfillError(f"Not an invoice_rendering_template: {json_text(obj)[:120]}")
        if not isinstance(version, int):
            raise BackfillError(f"Template {template_id} has no integer version")
        guarded_upsert(
            writes,
            InvoiceRenderingTemplate,
            {"id": template_id},
            template_columns(obj),
            Version(0, version, 0, BACKFILL_SOURCE),
        )
    return execute_writes(driver_connection(session), writes.planned)


@dataclass(frozen=True)
class LinesBackfill:
    invoice: str
    lines: int
    complete: bool  # lines_incomplete was cleared


def backfill_lines(session: Session, invoice_id: str, page: StripeList) -> LinesBackfill:
    """Write the lines of ``invoice_id`` from a lines list, versioned like the invoice snapshot the
    mirror holds. The invoice row is locked while this runs, so no event can slip in between."""
    for line in page.data:
        if line.get("object") != "line_item" or line.get("invoice") not in (None, invoice_id):
            raise BackfillError(f"Not a line of {invoice_id}: {json_text(line)[:120]}")
    invoices = table_of(Invoice)
    stored = session.execute(
        select(*(invoices.c[name] for name in VERSION_COLUMNS))
        .where(invoices.c.id == invoice_id)
        .with_for_update()
    ).first()
    if stored is None or stored.version_precedence < 0:
        raise BackfillError(f"Invoice {invoice_id} is not in the mirror yet; its events must arrive first")
    version = Version(
        stored.version_precedence, stored.last_event_created, stored.version_tiebreak, stored.last_event_id
    )
    writes = Writes(session.get_bind().dialect)
    write_lines(writes, invoice_id, page.data, page.complete, version)
    execute_writes(driver_connection(session), writes.planned)
    cleared = False
    if page.complete:
        # The list was fetched after that snapshot: lines it no longer names are gone.
        listed = [line["id"] for line in page.data if isinstance(line.get("id"), str)]
        delete_unlisted(session, InvoiceLineItem, "invoice", invoice_id, listed, version)
        current = tuple_(*(invoices.c[name] for name in VERSION_COLUMNS))
        result = session.execute(
            update(invoices)
            .where(invoices.c.id == invoice_id, current == tuple_(*version.as_columns().values()))
            .values(lines_incomplete=False)
        )
        cleared = bool(result.rowcount)  # type: ignore[attr-defined]
    return LinesBackfill(invoice_id, len(page.data), cleared)


def run_in_transaction(engine: Engine, work: Callable[[Session], T]) -> T:
    """One transaction around a backfill: everything or nothing is written."""
    with Session(engine) as session, session.begin():
        return work(session)
