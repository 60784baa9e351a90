"""Reading invoices: GET /v1/invoices and /v1/invoices/{id}.

Deleted invoices are left out of lists and retrieve as Stripe's deleted object.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, Connection, false

from app.db.models import Invoice
from app.mirror.upsert import table_of
from app.read.pagination import Listing, Page, fetch_page, time_conditions
from app.read.params import Choice, ListRequest, ParamSpec, Text, Timestamp
from app.read.resource import Resource
from app.read.tombstones import retrieve_or_tombstone

TABLE = table_of(Invoice)
STATUSES = ("draft", "open", "paid", "uncollectible", "void")

FILTERS: dict[str, ParamSpec] = {
    "customer": Text(),
    "status": Choice(STATUSES),
    "subscription": Text(),
    "created": Timestamp(),
}
LISTING = Listing("invoice", TABLE.c.id, TABLE.c.created, TABLE.c.payload)


def list_page(connection: Connection, request: ListRequest) -> Page:
    filters = request.filters
    # A stub tombstone has no payload; it is deleted anyway, the second test only keeps lists safe.
    conditions: list[ColumnElement[bool]] = [TABLE.c.deleted == false(), TABLE.c.payload.is_not(None)]
    for name in ("customer", "status", "subscription"):
        if name in filters:
            conditions.append(TABLE.c[name] == filters[name])
    if "created" in filters:
        conditions += time_conditions(TABLE.c.created, filters["created"])
    return fetch_page(connection, LISTING, conditions, request.page)


def retrieve(connection: Connection, invoice_id: str) -> str | None:
    return retrieve_or_tombstone(connection, TABLE, "invoice", invoice_id)


RESOURCE = Resource(
    object_name="invoice",
    url="/v1/invoices",
    filters=FILTERS,
    list_page=list_page,
    retrieve=retrieve,
)
