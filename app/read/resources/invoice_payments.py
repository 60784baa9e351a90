"""Reading invoice payments: GET /v1/invoice_payments and ``billing-mirror payments``."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Connection

from app.db.models import InvoicePayment
from app.mirror.upsert import table_of
from app.read.errors import InvalidRequest
from app.read.pagination import Listing, Page, fetch_page, stored_payload, time_conditions
from app.read.params import Choice, ListRequest, Object, ParamSpec, Text, Timestamp
from app.read.resource import Resource

TABLE = table_of(InvoicePayment)
STATUSES = ("open", "paid", "canceled")
# Stripe's spec lists payment_intent and payment_record; an invoice payment may also be a bare charge.
PAYMENT_TYPES = ("payment_intent", "payment_record", "charge")

FILTERS: dict[str, ParamSpec] = {
    "invoice": Text(),
    "status": Choice(STATUSES),
    "created": Timestamp(),
    "payment": Object(
        {"type": Choice(PAYMENT_TYPES), **{name: Text() for name in PAYMENT_TYPES}}, required=("type",)
    ),
}
LISTING = Listing("invoice_payment", TABLE.c.id, TABLE.c.created, TABLE.c.payload)


def _payment_conditions(payment: dict[str, Any]) -> list[ColumnElement[bool]]:
    payment_type = payment["type"]
    for name in PAYMENT_TYPES:
        if name in payment and name != payment_type:
            raise InvalidRequest(
                f"payment[{name}] can only be used with payment[type]={name}", param=f"payment[{name}]"
            )
    conditions = [TABLE.c.payment_type == payment_type]
    if payment_type in payment:
        conditions.append(TABLE.c.payment_id == payment[payment_type])
    return conditions


def list_page(connection: Connection, request: ListRequest) -> Page:
    filters = request.filters
    conditions: list[ColumnElement[bool]] = []
    if "invoice" in filters:
        conditions.append(TABLE.c.invoice == filters["invoice"])
    if "status" in filters:
        conditions.append(TABLE.c.status == filters["status"])
    if "created" in filters:
        conditions += time_conditions(TABLE.c.created, filters["created"])
    if "payment" in filters:
        conditions += _payment_conditions(filters["payment"])
    return fetch_page(connection, LISTING, conditions, request.page, request.account)


def retrieve(connection: Connection, payment_id: str, account: str | None = None) -> str | None:
    return stored_payload(connection, TABLE, payment_id, account)


RESOURCE = Resource(
    object_name="invoice_payment",
    url="/v1/invoice_payments",
    filters=FILTERS,
    list_page=list_page,
    retrieve=retrieve,
)
