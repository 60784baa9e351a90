"""Reading invoice items: GET /v1/invoiceitems and ``billing-mirror items``.

Invoice items have ``date`` and no ``created``: the ``created`` filter and the list order use ``date``.
Deleted items are left out of lists and retrieve as Stripe's deleted object.

An item's ``invoice`` is served as Stripe would answer now: the invoice it is on according to the
newest evidence (app.db.models.item_invoice: its own snapshot, or the lines of an invoice snapshot
that name it, and no longer once a newer complete line list of that invoice drops it), since Stripe
sends no event when a pending item is pulled onto an invoice or taken off a draft. ``pending`` and
``invoice=`` filter on that same invoice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Connection, false, or_, select

from app.db.models import InvoiceItem, InvoiceItemInvoice, item_invoice
from app.json_text import json_text, json_value
from app.mirror.upsert import table_of
from app.read.pagination import Listing, Page, fetch_page, of_account, time_conditions
from app.read.params import Boolean, ListRequest, ParamSpec, Text, Timestamp
from app.read.resource import Resource
from app.read.tombstones import deleted_object

TABLE = table_of(InvoiceItem)
LINKS = table_of(InvoiceItemInvoice)
CURRENT_INVOICE = item_invoice()

FILTERS: dict[str, ParamSpec] = {
    "customer": Text(),
    "invoice": Text(),
    "pending": Boolean(),
    "created": Timestamp(),
}


def as_served(payload: str, values: Sequence[Any]) -> str:
    """The stored item, its ``invoice`` the one it is on now when that differs from what it said."""
    own, current = values
    if own == current:
        return payload
    obj = json_value(payload)
    obj["invoice"] = current
    return json_text(obj)


LISTING = Listing(
    "invoiceitem", TABLE.c.id, TABLE.c.date, TABLE.c.payload, (TABLE.c.invoice, CURRENT_INVOICE), as_served
)


def _ids(connection: Connection, query: Any) -> list[str]:
    return list(connection.execute(query).scalars())


def list_page(connection: Connection, request: ListRequest) -> Page:
    filters = request.filters
    # A stub tombstone has no payload; it is deleted anyway, the second test only keeps lists safe.
    conditions: list[ColumnElement[bool]] = [TABLE.c.deleted == false(), TABLE.c.payload.is_not(None)]
    if "customer" in filters:
        conditions.append(TABLE.c.customer == filters["customer"])
    if "invoice" in filters:
        # The ids seen on this invoice are read first, so that the candidates are two plain index
        # lookups (the invoice column and the primary key) on both databases; the invoice each is
        # on now is then decided row by row.
        invoice = filters["invoice"]
        seen = _ids(
            connection, select(LINKS.c.invoice_item).where(LINKS.c.invoice == invoice, LINKS.c.present)
        )
        on_it = TABLE.c.invoice == invoice
        conditions += [or_(on_it, TABLE.c.id.in_(seen)) if seen else on_it, invoice == CURRENT_INVOICE]
    if "pending" in filters:
        if filters["pending"]:
            # Candidates: what its own snapshot calls pending ("invoice IS NULL", written as the partial
            # indexes' predicate), and the few items taken off an invoice (a partial index of their own).
            taken_off = _ids(connection, select(LINKS.c.invoice_item).where(~LINKS.c.present).distinct())
            pending = TABLE.c.invoice.is_(None)
            conditions += [or_(pending, TABLE.c.id.in_(taken_off)) if taken_off else pending]
            conditions.append(CURRENT_INVOICE.is_(None))
        else:
            conditions.append(CURRENT_INVOICE.is_not(None))
    if "created" in filters:
        conditions += time_conditions(TABLE.c.date, filters["created"])
    return fetch_page(connection, LISTING, conditions, request.page, request.account)


def retrieve(connection: Connection, item_id: str, account: str | None = None) -> str | None:
    query = select(TABLE.c.payload, TABLE.c.deleted, TABLE.c.invoice, CURRENT_INVOICE).where(
        TABLE.c.id == item_id, of_account(TABLE, account)
    )
    row = connection.execute(query).first()
    if row is None:
        return None
    if row.deleted:
        return deleted_object("invoiceitem", item_id)
    return as_served(row.payload, (row[2], row[3]))


RESOURCE = Resource(
    object_name="invoiceitem",
    url="/v1/invoiceitems",
    filters=FILTERS,
    list_page=list_page,
    retrieve=retrieve,
)
