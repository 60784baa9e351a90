"""Reading invoice rendering templates (filled by ``billing-mirror backfill templates``):
GET /v1/invoice_rendering_templates and /v1/invoice_rendering_templates/{id}."""

from __future__ import annotations

from sqlalchemy import ColumnElement, Connection

from app.db.models import InvoiceRenderingTemplate
from app.mirror.upsert import table_of
from app.read.pagination import Listing, Page, fetch_page, stored_payload
from app.read.params import Choice, ListRequest, ParamSpec
from app.read.resource import Resource

TABLE = table_of(InvoiceRenderingTemplate)
FILTERS: dict[str, ParamSpec] = {"status": Choice(("active", "archived"))}
LISTING = Listing("invoice_rendering_template", TABLE.c.id, TABLE.c.created, TABLE.c.payload)


def list_page(connection: Connection, request: ListRequest) -> Page:
    conditions: list[ColumnElement[bool]] = []
    if "status" in request.filters:
        conditions.append(TABLE.c.status == request.filters["status"])
    return fetch_page(connection, LISTING, conditions, request.page, request.account)


def retrieve(connection: Connection, template_id: str, account: str | None = None) -> str | None:
    return stored_payload(connection, TABLE, template_id, account)


RESOURCE = Resource(
    object_name="invoice_rendering_template",
    url="/v1/invoice_rendering_templates",
    filters=FILTERS,
    list_page=list_page,
    retrieve=retrieve,
)
