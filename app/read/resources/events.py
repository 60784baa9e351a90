"""Reading the stored events: GET /v1/events and /v1/events/{id}, as Stripe's Events API serves them.

Every event the mirror stored (webhooks, the Events API, replays) is listed, newest first, each as
its stored body, whatever its outcome, so ``client.v1.events.list()`` works against the mirror and
one mirror can catch up from another (``billing-mirror sync events --api-base <mirror>``). Unlike
Stripe, the mirror keeps events past 30 days. Thin (v2) events are not v1 events and are left out,
as in Stripe. The mirror's own snapshot events (``snapshot.*``: what sync read from the API) are
listed only when a ``type`` filter names them.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Connection, false, or_, select

from app.db.models import StripeEvent
from app.mirror.snapshots import SNAPSHOT_PREFIX
from app.mirror.upsert import table_of
from app.read.errors import InvalidRequest
from app.read.pagination import Listing, Page, fetch_page, of_account, time_conditions
from app.read.params import Array, ListRequest, ParamSpec, Text, Timestamp
from app.read.resource import Resource

TABLE = table_of(StripeEvent)
MAX_TYPES = 20

FILTERS: dict[str, ParamSpec] = {
    "type": Text(),
    "types": Array(Text(), max_items=MAX_TYPES),
    "created": Timestamp(),
}
LISTING = Listing("event", TABLE.c.id, TABLE.c.created, TABLE.c.payload)


def _type_condition(pattern: str) -> ColumnElement[bool]:
    """``invoice.created``, or a group with ``*`` such as ``invoice.*``."""
    if "*" not in pattern:
        return TABLE.c.type == pattern
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_").replace("*", "%")
    return TABLE.c.type.like(escaped, escape="\\")


def _names_snapshots(patterns: list[str]) -> bool:
    return any(pattern.startswith(SNAPSHOT_PREFIX) for pattern in patterns)


def list_page(connection: Connection, request: ListRequest) -> Page:
    filters: dict[str, Any] = dict(request.filters)
    if "type" in filters and "types" in filters:
        raise InvalidRequest("You may only specify one of these parameters: type, types.", param="types")
    patterns: list[str] = [filters["type"]] if "type" in filters else list(filters.get("types", []))
    conditions: list[ColumnElement[bool]] = [TABLE.c.thin == false()]
    if patterns:
        conditions.append(or_(*(_type_condition(pattern) for pattern in patterns)))
    if not _names_snapshots(patterns):
        conditions.append(~TABLE.c.type.startswith(SNAPSHOT_PREFIX, autoescape=True))
    if "created" in filters:
        conditions += time_conditions(TABLE.c.created, filters["created"])
    return fetch_page(connection, LISTING, conditions, request.page, request.account)


def retrieve(connection: Connection, event_id: str, account: str | None = None) -> str | None:
    query = select(TABLE.c.payload).where(
        TABLE.c.id == event_id, TABLE.c.thin == false(), of_account(TABLE, account)
    )
    found: str | None = connection.execute(query).scalar_one_or_none()
    return found


RESOURCE = Resource(
    object_name="event",
    url="/v1/events",
    filters=FILTERS,
    list_page=list_page,
    retrieve=retrieve,
)
