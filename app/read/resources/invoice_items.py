"""Reading invoice items: GET /v1/invoiceitems and ``billing-mirror items``.

Invoice items have ``date`` and no ``created``: the ``created`` filter and the list order use ``date``.
Deleted items are left out of lists and retrieve as Stripe's deleted object. An item is on an invoice
when its own snapshot says so or when a line of an invoice names it (invoice_item_invoices): Stripe
sends no event when a pending item is pulled onto an invoice.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, Connection, and_, exists, false, or_, select

from app.db.models import InvoiceItem, InvoiceItemInvoice
from app.mirror.upsert import table_of
from app.read.pagination import Listing, Page, fetch_page, time_conditions
from app.read.params import Boolean, ListRequest, ParamSpec, Text, Timestamp
from app.read.resource import Resource
from app.read.tombstones import retrieve_or_tombstone

TABLE = table_of(InvoiceItem)
LINKS = table_of(InvoiceItemInvoice)

FILTERS: dict[str, ParamSpec] = {
    "customer": Text(),
    "invoice": Text(),
    "pending": Boolean(),
    "created": Timestamp(),
}
LISTING = Listing("invoiceitem", TABLE.c.id, TABLE.c.date, TABLE.c.payload)


def _linked(invoice: str | None = None) -> ColumnElement[bool]:
    """A line of some invoice (or of ``invoice``) names this item."""
    link = exists().where(LINKS.c.invoice_item == TABLE.c.id)
    return link.where(LINKS.c.invoice == invoice) if invoice is not None else link


def list_page(connection: Connection, request: ListRequest) -> Page:
    filters = request.filters
    # A stub tombstone has no payload; it is deleted anyway, the second test only keeps lists safe.
    conditions: list[ColumnElement[bool]] = [TABLE.c.deleted == false(), TABLE.c.payload.is_not(None)]
    if "customer" in filters:
        conditions.append(TABLE.c.customer == filters["customer"])
    if "invoice" in filters:
        # Read the ids this invoice's lines name first, so the OR below is two plain index lookups
        # (the invoice column and the primary key) on both databases; a subquery inside the OR would
        # make PostgreSQL scan the table in date order instead.
        invoice = filters["invoice"]
        named = select(LINKS.c.invoice_item).where(LINKS.c.invoice == invoice)
        linked_ids = list(connection.execute(named).scalars())
        on_it = TABLE.c.invoice == invoice
        conditions.append(
            or_(on_it, and_(TABLE.c.id.in_(linked_ids), TABLE.c.invoice.is_(None))) if linked_ids else on_it
        )
    if "pending" in filters:
        # "invoice IS NULL" is written exactly as the partial indexes' predicate, so both databases
        # can use them; the link check then only runs on those few rows.
        pending = and_(TABLE.c.invoice.is_(None), ~_linked())
        conditions.append(pending if filters["pending"] else or_(TABLE.c.invoice.is_not(None), _linked()))
    if "created" in filters:
        conditions += time_conditions(TABLE.c.date, filters["created"])
    return fetch_page(connection, LISTING, conditions, request.page)


def retrieve(connection: Connection, item_id: str) -> str | None:
    return retrieve_or_tombstone(connection, TABLE, "invoiceitem", item_id)


RESOURCE = Resource(
    object_name="invoiceitem",
    url="/v1/invoiceitems",
    filters=FILTERS,
    list_page=list_page,
    retrieve=retrieve,
)
