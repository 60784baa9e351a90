"""Read again what the mirror knows is out of date, without waiting for a user to notice.

The mirror knows two kinds of staleness of its own:

* an invoice item whose own snapshot says it is pending (or names another invoice) while a newer
  invoice snapshot lists it as a line (Stripe sends no ``invoiceitem.updated`` when a pending item is
  pulled onto an invoice), or names an invoice whose newer complete line list no longer does (taken
  off a draft);
* an invoice whose newest snapshot carried only the first page of its lines (``lines_incomplete``).

Each is read again from Stripe (``GET /v1/invoiceitems/{id}``; ``GET /v1/invoices/{id}`` and every
page of its lines) and applied as a snapshot event with source ``refresh``. A refreshed object is
newer than what made it stale, so it is not picked again; an object Stripe no longer has is
tombstoned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, or_, select, tuple_

from app.db.models import Invoice, InvoiceItem, InvoiceItemInvoice
from app.ingest.apply import DatabaseUnavailable
from app.ingest.store import EventStore
from app.mirror.envelope import EventSource
from app.mirror.outcome import Outcome
from app.mirror.upsert import VERSION_COLUMNS, table_of
from app.sync.fetch import StripeReader, complete_invoice
from app.sync.resources import INVOICE_ITEMS, INVOICES, Resource, fetched_snapshot, written_for_account

REFRESH_LIMIT = 100  # objects per round: the rest wait for the next one (the API budget is shared)


@dataclass
class RefreshReport:
    items: int = 0
    invoices: int = 0
    gone: int = 0
    failed: int = 0

    @property
    def total(self) -> int:
        return self.items + self.invoices


def out_of_date(
    engine: Engine, account: str | None, limit: int = REFRESH_LIMIT
) -> list[tuple[Resource, str]]:
    """Up to ``limit`` objects the mirror knows are out of date: items first, then invoices."""
    items, links, invoices = table_of(InvoiceItem), table_of(InvoiceItemInvoice), table_of(Invoice)
    newer_than_item = tuple_(*(links.c[name] for name in VERSION_COLUMNS)) > tuple_(
        *(items.c[name] for name in VERSION_COLUMNS)
    )
    linked_items = (
        select(links.c.invoice_item)
        .select_from(links.join(items, items.c.id == links.c.invoice_item))
        .where(
            written_for_account(links, account),
            ~items.c.deleted,
            newer_than_item,
            or_(
                links.c.present & or_(items.c.invoice.is_(None), items.c.invoice != links.c.invoice),
                ~links.c.present & (items.c.invoice == links.c.invoice),
            ),
        )
        .distinct()
        .order_by(links.c.invoice_item)
        .limit(limit)
    )
    incomplete = (
        select(invoices.c.id)
        .where(
            invoices.c.lines_incomplete.is_(True), ~invoices.c.deleted, written_for_account(invoices, account)
        )
        .order_by(invoices.c.id)
        .limit(limit)
    )
    with engine.connect() as connection:
        found = [(INVOICE_ITEMS, item_id) for (item_id,) in connection.execute(linked_items)]
        found += [(INVOICES, invoice_id) for (invoice_id,) in connection.execute(incomplete)]
    return found[:limit]


def refresh(
    reader: StripeReader, engine: Engine, store: EventStore, *, limit: int = REFRESH_LIMIT
) -> RefreshReport:
    """Read the out-of-date objects again and apply them; what is left waits for the next round."""
    report = RefreshReport()
    for resource, object_id in out_of_date(engine, reader.api.stripe_account, limit):
        obj, fetched_at, request_id = reader.retrieve(
            f"{resource.path}/{object_id}", endpoint=resource.retrieve_endpoint
        )
        listed: dict[str, Any]
        if obj is None:
            listed = {"id": object_id, "object": resource.object_name, "deleted": True}
            report.gone += 1
        else:
            if resource is INVOICES:
                complete_invoice(reader, obj)
            listed = obj
        event = fetched_snapshot(
            reader.api,
            resource,
            [listed],
            fetched_at=fetched_at,
            request_id=request_id,
            origin=EventSource.REFRESH,
        )
        [result] = store.ingest([event])
        if isinstance(result, DatabaseUnavailable) or result.outcome == Outcome.FAILED:
            report.failed += 1
        elif resource is INVOICES:
            report.invoices += 1
        else:
            report.items += 1
    return report
