"""Every resource the read API and the query command serve. Add a resource here to publish it."""

from __future__ import annotations

from app.read.resource import NestedList, Resource
from app.read.resources import (
    billing_alerts,
    billing_meters,
    events,
    invoice_items,
    invoice_lines,
    invoice_payments,
    invoice_rendering_templates,
    invoices,
)

RESOURCES: tuple[Resource, ...] = (
    invoice_payments.RESOURCE,
    invoice_items.RESOURCE,
    invoices.RESOURCE,
    billing_meters.RESOURCE,
    billing_alerts.RESOURCE,
    invoice_rendering_templates.RESOURCE,
    events.RESOURCE,
)
# Lists under a parent object; served before the parent's retrieve route.
NESTED_LISTS: tuple[NestedList, ...] = (invoice_lines.LINES,)
