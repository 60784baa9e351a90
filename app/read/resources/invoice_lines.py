"""Reading an invoice's lines: GET /v1/invoices/{id}/lines, in the invoice's own line order.

Lines are ordered by their position in the invoice (the order of ``lines.data``), not newest first;
the shared cursor pagination runs on the negated position, so ``starting_after`` moves down the invoice.
"""

from __future__ import annotations

from sqlalchemy import Connection, false, select

from app.db.models import Invoice, InvoiceLineItem
from app.mirror.upsert import table_of
from app.read.errors import resource_missing
from app.read.pagination import Listing, Page, fetch_page, of_account
from app.read.params import ListRequest, ParamSpec
from app.read.resource import NestedList

TABLE = table_of(InvoiceLineItem)
INVOICES = table_of(Invoice)
FILTERS: dict[str, ParamSpec] = {}
LISTING = Listing("line_item", TABLE.c.id, (-TABLE.c.position).label("negated_position"), TABLE.c.payload)


def list_page(connection: Connection, invoice_id: str, request: ListRequest) -> Page:
    known = connection.execute(
        select(INVOICES.c.id).where(
            INVOICES.c.id == invoice_id,
            INVOICES.c.deleted == false(),
            INVOICES.c.payload.is_not(None),
            of_account(INVOICES, request.account),
        )
    ).first()
    if known is None:
        raise resource_missing("invoice", invoice_id, param="invoice", status=404)
    return fetch_page(connection, LISTING, [TABLE.c.invoice == invoice_id], request.page, request.account)


LINES = NestedList(
    object_name="line_item",
    parent_name="invoice",
    url="/v1/invoices/{parent_id}/lines",
    filters=FILTERS,
    list_page=list_page,
)
