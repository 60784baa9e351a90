"""What a front end needs to know about one readable resource. Register new ones in app.query.registry."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from sqlalchemy import Connection

from app.query.pagination import Page
from app.query.params import ListRequest, ParamSpec


@dataclass(frozen=True)
class Resource:
    object_name: str  # Stripe's ``object`` value, e.g. "invoice_payment"
    url: str  # the list path, e.g. "/v1/invoice_payments"; retrieve is f"{url}/{{id}}"
    filters: Mapping[str, ParamSpec]  # list filters, besides limit / starting_after / ending_before
    list_page: Callable[[Connection, ListRequest], Page]
    # The object as JSON text (a deleted object's stub where the resource has tombstones), or None.
    retrieve: Callable[[Connection, str], str | None]
