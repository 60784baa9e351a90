"""Every resource the read API and the query command serve. Add a resource here to publish it."""

from __future__ import annotations

from app.query import invoice_items, invoice_payments
from app.query.resource import Resource

RESOURCES: tuple[Resource, ...] = (invoice_payments.RESOURCE, invoice_items.RESOURCE)
