"""Reading invoices: GET /v1/invoices and /v1/invoices/{id}.

Deleted invoices are left out of lists and retrieve as Stripe's deleted object. ``payments`` is
includable, as in Stripe: ``expand[]=payments`` (``expand[]=data.payments`` on the list) adds the
invoice's payments from invoice_payments, newest first, the first EMBEDDED_PAYMENTS of them with
``has_more`` and the ``url`` that pages the rest.
"""

from __future__ import annotations

import orjson
from sqlalchemy import ColumnElement, Connection, false, select

from app.db.models import Invoice, InvoicePayment
from app.json_text import json_text
from app.mirror.upsert import table_of
from app.read.pagination import Listing, Page, fetch_page, time_conditions
from app.read.params import Choice, ListRequest, ParamSpec, Text, Timestamp
from app.read.resource import Resource
from app.read.tombstones import retrieve_or_tombstone

TABLE = table_of(Invoice)
PAYMENTS = table_of(InvoicePayment)
EMBEDDED_PAYMENTS = 10
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
    return fetch_page(connection, LISTING, conditions, request.page, request.account)


def retrieve(connection: Connection, invoice_id: str, account: str | None = None) -> str | None:
    return retrieve_or_tombstone(connection, TABLE, "invoice", invoice_id, account)


def expand(connection: Connection, payloads: list[str], paths: frozenset[str]) -> list[str]:
    """The invoices with their ``payments`` list (a deleted invoice's stub stays as it is)."""
    if "payments" not in paths:
        return payloads
    decoded = [orjson.loads(payload) for payload in payloads]
    ids = [obj["id"] for obj in decoded if not obj.get("deleted") and isinstance(obj.get("id"), str)]
    embedded: dict[str, list[str]] = {invoice_id: [] for invoice_id in ids}
    more: set[str] = set()
    if ids:
        query = (
            select(PAYMENTS.c.invoice, PAYMENTS.c.payload)
            .where(PAYMENTS.c.invoice.in_(ids))
            .order_by(PAYMENTS.c.invoice, PAYMENTS.c.created.desc(), PAYMENTS.c.id.desc())
        )
        for invoice_id, payload in connection.execute(query):
            kept = embedded[invoice_id]
            if len(kept) < EMBEDDED_PAYMENTS:
                kept.append(payload)
            else:
                more.add(invoice_id)
    expanded = []
    for text, obj in zip(payloads, decoded, strict=True):
        invoice_id = obj.get("id")
        if invoice_id not in embedded:
            expanded.append(text)
            continue
        listed = Page(embedded[invoice_id], invoice_id in more).list_json(
            f"/v1/invoice_payments?invoice={invoice_id}"
        )
        if "payments" in obj:  # what a webhook carried is replaced by what the mirror holds now
            expanded.append(json_text({**obj, "payments": orjson.loads(listed)}))
        else:
            expanded.append(f'{text.rstrip()[:-1]},"payments":{listed}}}')
    return expanded


RESOURCE = Resource(
    object_name="invoice",
    url="/v1/invoices",
    filters=FILTERS,
    list_page=list_page,
    retrieve=retrieve,
    expandable=frozenset({"payments"}),
    expand=expand,
)
