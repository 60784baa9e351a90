"""Reading billing alerts: GET /v1/billing/alerts and /v1/billing/alerts/{id}.

An alert has no creation time, so lists are ordered by id alone (newest ids first); the shared
pagination runs with a constant timestamp.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, Connection, literal

from app.db.models import BillingAlert
from app.mirror.upsert import table_of
from app.read.pagination import Listing, Page, fetch_page, stored_payload
from app.read.params import ListRequest, ParamSpec, Text
from app.read.resource import Resource

TABLE = table_of(BillingAlert)
FILTERS: dict[str, ParamSpec] = {"alert_type": Text(), "meter": Text(), "customer": Text()}
LISTING = Listing("billing.alert", TABLE.c.id, literal(0).label("no_created"), TABLE.c.payload)


def list_page(connection: Connection, request: ListRequest) -> Page:
    conditions: list[ColumnElement[bool]] = [
        TABLE.c[name] == request.filters[name] for name in FILTERS if name in request.filters
    ]
    return fetch_page(connection, LISTING, conditions, request.page, request.account)


def retrieve(connection: Connection, alert_id: str, account: str | None = None) -> str | None:
    return stored_payload(connection, TABLE, alert_id, account)


RESOURCE = Resource(
    object_name="billing.alert",
    url="/v1/billing/alerts",
    filters=FILTERS,
    list_page=list_page,
    retrieve=retrieve,
)
