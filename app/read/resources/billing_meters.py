"""Reading billing meters: GET /v1/billing/meters and /v1/billing/meters/{id}."""

from __future__ import annotations

from sqlalchemy import ColumnElement, Connection

from app.db.models import BillingMeter
from app.mirror.upsert import table_of
from app.read.pagination import Listing, Page, fetch_page, stored_payload
from app.read.params import Choice, ListRequest, ParamSpec
from app.read.resource import Resource

TABLE = table_of(BillingMeter)
FILTERS: dict[str, ParamSpec] = {"status": Choice(("active", "inactive"))}
LISTING = Listing("billing.meter", TABLE.c.id, TABLE.c.created, TABLE.c.payload)


def list_page(connection: Connection, request: ListRequest) -> Page:
    conditions: list[ColumnElement[bool]] = []
    if "status" in request.filters:
        conditions.append(TABLE.c.status == request.filters["status"])
    return fetch_page(connection, LISTING, conditions, request.page, request.account)


def retrieve(connection: Connection, meter_id: str, account: str | None = None) -> str | None:
    return stored_payload(connection, TABLE, meter_id, account)


RESOURCE = Resource(
    object_name="billing.meter",
    url="/v1/billing/meters",
    filters=FILTERS,
    list_page=list_page,
    retrieve=retrieve,
)
