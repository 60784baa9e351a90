"""The Stripe lists sync reads, and what the mirror keeps of each."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table
from sqlmodel import SQLModel

from app.db.models import (
    BillingAlert,
    BillingMeter,
    Invoice,
    InvoiceItem,
    InvoicePayment,
    InvoiceRenderingTemplate,
)
from app.mirror.envelope import Event, EventSource
from app.mirror.snapshots import snapshot_event
from app.sync.fetch import StripeApi, is_live_key


@dataclass(frozen=True)
class Resource:
    name: str  # as in sync_windows.resource and on the command line
    object_name: str  # Stripe's object name, e.g. "invoice"
    path: str  # the list endpoint; GET {path}/{id} retrieves one
    created_filter: bool  # the list takes `created` (so it can be fetched in windows, in parallel)
    created_field: str | None  # the object's creation time (`date` for items; alerts have none)
    model: type[SQLModel]
    aliases: tuple[str, ...] = ()
    tombstones: bool = False  # Stripe deletes these for good (the mirror keeps a tombstone)

    @property
    def retrieve_endpoint(self) -> str:
        return f"{self.path}/{{id}}"

    def created_of(self, obj: dict[str, object]) -> int | None:
        value = obj.get(self.created_field) if self.created_field else None
        return value if isinstance(value, int) and not isinstance(value, bool) else None


INVOICES = Resource(
    "invoices", "invoice", "/v1/invoices", True, "created", Invoice, ("invoice",), tombstones=True
)
INVOICE_ITEMS = Resource(
    "invoiceitems",
    "invoiceitem",
    "/v1/invoiceitems",
    True,
    "date",
    InvoiceItem,
    ("items", "invoice_items", "invoiceitem"),
    tombstones=True,
)
INVOICE_PAYMENTS = Resource(
    "invoice_payments",
    "invoice_payment",
    "/v1/invoice_payments",
    True,
    "created",
    InvoicePayment,
    ("payments", "invoicepayments"),
)
METERS = Resource(
    "meters", "billing.meter", "/v1/billing/meters", False, "created", BillingMeter, ("billing.meters",)
)
ALERTS = Resource(
    "alerts", "billing.alert", "/v1/billing/alerts", False, None, BillingAlert, ("billing.alerts",)
)
TEMPLATES = Resource(
    "templates",
    "invoice_rendering_template",
    "/v1/invoice_rendering_templates",
    False,
    "created",
    InvoiceRenderingTemplate,
    ("invoice_rendering_templates",),
)

# The order a full sync takes them in (small lists first; they all run at once).
RESOURCES: tuple[Resource, ...] = (METERS, ALERTS, TEMPLATES, INVOICE_PAYMENTS, INVOICE_ITEMS, INVOICES)
BY_NAME = {name: resource for resource in RESOURCES for name in (resource.name, *resource.aliases)}


def resolve(names: tuple[str, ...] | list[str]) -> list[Resource]:
    """The resources named (any alias), in sync order, each once; all of them when none is named."""
    if not names:
        return list(RESOURCES)
    unknown = [name for name in names if name not in BY_NAME]
    if unknown:
        known = ", ".join(resource.name for resource in RESOURCES)
        raise ValueError(f"Unknown resource {unknown[0]!r}: choose among {known}")
    chosen = {BY_NAME[name] for name in names}
    return [resource for resource in RESOURCES if resource in chosen]


def written_for_account(table: Table, account: str | None) -> Any:
    """A condition on mirrored rows: written for ``account`` (None: the account of the key). One
    mirror may hold several Connect accounts; each row records the account of the event that wrote it."""
    return table.c.account.is_(None) if account is None else table.c.account == account


def fetched_snapshot(
    api: StripeApi,
    resource: Resource,
    objects: Sequence[dict[str, Any]],
    *,
    fetched_at: int,
    request_id: str | None,
    origin: EventSource,
    has_more: bool = False,
) -> Event:
    """The snapshot event of ``objects`` of ``resource`` as read through ``api`` (its account, version
    and mode) at ``fetched_at``, Stripe's time."""
    return snapshot_event(
        resource.object_name,
        objects,
        fetched_at=fetched_at,
        url=resource.path,
        origin=origin,
        api_version=api.stripe_version,
        livemode=is_live_key(api.api_key),
        account=api.stripe_account,
        request_id=request_id,
        has_more=has_more,
    )
