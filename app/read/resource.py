"""What a front end needs to know about one readable resource. Register new ones in app.read.registry."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from sqlalchemy import Connection

from app.read.pagination import Page
from app.read.params import ListRequest, ParamSpec

# Objects (JSON text) with the named paths expanded (``payments`` of an invoice, say).
Expander = Callable[[Connection, list[str], frozenset[str]], list[str]]


@dataclass(frozen=True)
class Resource:
    object_name: str  # Stripe's ``object`` value, e.g. "invoice_payment"
    url: str  # the list path, e.g. "/v1/invoice_payments"; retrieve is f"{url}/{{id}}"
    filters: Mapping[str, ParamSpec]  # list filters, besides limit / starting_after / ending_before
    list_page: Callable[[Connection, ListRequest], Page]
    # The object as JSON text (a deleted object's stub where the resource has tombstones), or None;
    # for the Connect account the request is made for (None: the platform's own).
    retrieve: Callable[[Connection, str, str | None], str | None]
    # What ``expand`` may name on a retrieve (a list takes the same paths under ``data.``).
    expandable: frozenset[str] = frozenset()
    expand: Expander | None = None

    def list_expandable(self) -> frozenset[str]:
        return frozenset(f"data.{path}" for path in self.expandable)


@dataclass(frozen=True)
class NestedList:
    """A list that lives under one parent object, e.g. GET /v1/invoices/{id}/lines (list only)."""

    object_name: str  # e.g. "line_item"
    parent_name: str  # e.g. "invoice", as in "No such invoice: 'x'"
    url: str  # with a "{parent_id}" placeholder
    filters: Mapping[str, ParamSpec]
    # Raises resource_missing when the parent is unknown.
    list_page: Callable[[Connection, str, ListRequest], Page]

    def url_for(self, parent_id: str) -> str:
        return self.url.replace("{parent_id}", parent_id)
