"""invoiceitem objects: invoiceitem.created and invoiceitem.deleted (Stripe sends no .updated)."""

from __future__ import annotations

from typing import Any

from app.db.models import InvoiceItem
from app.json_text import json_text
from app.mirror.handlers.base import Source, StripeObject, as_dict, ref_id
from app.mirror.upsert import NO_DATA, guarded_upsert
from app.mirror.writes import Writes

STUB_KEYS = frozenset({"id", "object", "deleted"})


def item_columns(obj: StripeObject) -> dict[str, Any]:
    get = obj.get
    parent = get("parent") or {}
    pricing = get("pricing") or {}
    period = get("period") or {}
    discounts = get("discounts")
    # Read without raising: a parent or pricing that is not an object fails below, where it always did.
    subscription = as_dict(as_dict(parent).get("subscription_details"))
    price = as_dict(as_dict(pricing).get("price_details"))
    return {
        "amount": get("amount"),
        "currency": get("currency"),
        "customer": ref_id(get("customer")),
        "customer_account": get("customer_account"),
        "date": get("date"),
        "description": get("description"),
        "discountable": get("discountable"),
        "discounts": [ref_id(d) or d for d in discounts] if isinstance(discounts, list) else discounts,
        "invoice": ref_id(get("invoice")),
        "livemode": get("livemode"),
        "metadata": get("metadata"),
        "net_amount": get("net_amount"),
        "parent_type": parent.get("type"),
        "subscription": ref_id(subscription.get("subscription")),
        "subscription_item": subscription.get("subscription_item"),
        "period_start": period.get("start"),
        "period_end": period.get("end"),
        "pricing_type": pricing.get("type"),
        "price": ref_id(price.get("price")),
        "product": price.get("product"),
        "unit_amount_decimal": pricing.get("unit_amount_decimal"),
        "proration": get("proration"),
        "proration_details": get("proration_details"),
        "quantity": get("quantity"),
        "quantity_decimal": get("quantity_decimal"),
        "tax_rates": get("tax_rates"),
        "test_clock": ref_id(get("test_clock")),
        "payload": json_text(obj),
    }


def _item_id(obj: StripeObject) -> str:
    item_id = obj.get("id")
    if not isinstance(item_id, str):
        raise ValueError("invoiceitem object has no id")
    return item_id


def upsert_item(writes: Writes, obj: StripeObject, source: Source, *, deleting: bool) -> None:
    """The item's row; ``deleting`` also sets the tombstone, and a deletion may carry the whole item
    or only the stub {id, object, deleted}, which keeps the item's last snapshot."""
    if deleting and set(obj) <= STUB_KEYS:
        data: dict[str, Any] = {}
        version = NO_DATA
    else:
        data, version = item_columns(obj), source.version(0)
    guarded_upsert(
        writes,
        InvoiceItem,
        {"id": _item_id(obj)},
        data,
        version,
        deleted_by=(source.event_id, source.created) if deleting else None,
    )


def handle_invoiceitem_created(writes: Writes, obj: StripeObject, source: Source) -> None:
    upsert_item(writes, obj, source, deleting=False)


def handle_invoiceitem_deleted(writes: Writes, obj: StripeObject, source: Source) -> None:
    upsert_item(writes, obj, source, deleting=True)
