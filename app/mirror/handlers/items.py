"""invoiceitem objects: invoiceitem.created, .deleted and, in archives from before 2024 (Stripe stopped
sending it), .updated, applied like any newer snapshot.

Columns are read from whichever shape the object has: ``parent`` and ``pricing`` since
2025-03-31.basil; before it a top-level ``subscription``/``subscription_item``, an embedded Price
object in ``price`` and a top-level ``unit_amount_decimal``."""

from __future__ import annotations

from typing import Any

from app.db.models import InvoiceItem
from app.json_text import json_text
from app.mirror.handlers.base import Source, StripeObject, as_dict, embedded_price, quantity_text, ref_id
from app.mirror.handlers.lines import link_item
from app.mirror.upsert import NO_DATA, guarded_upsert
from app.mirror.writes import Writes

STUB_KEYS = frozenset({"id", "object", "deleted"})


def item_columns(obj: StripeObject) -> dict[str, Any]:
    get = obj.get
    period = get("period") or {}
    discounts = get("discounts")
    price, product, pricing_type = embedded_price(obj)
    if "parent" in obj:  # 2025-03-31.basil and later
        parent = get("parent") or {}
        subscription = as_dict(parent.get("subscription_details"))  # a parent that is not an object fails
        subscription_id = ref_id(subscription.get("subscription"))
        subscription_item = subscription.get("subscription_item")
        parent_type = parent.get("type")
        unit_amount = as_dict(get("pricing")).get("unit_amount_decimal")
    else:
        subscription_id = ref_id(get("subscription"))
        subscription_item = get("subscription_item")
        parent_type = "subscription_details" if subscription_id else None
        unit_amount = get("unit_amount_decimal")
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
        "parent_type": parent_type,
        "subscription": subscription_id,
        "subscription_item": subscription_item,
        "period_start": period.get("start"),
        "period_end": period.get("end"),
        "pricing_type": pricing_type,
        "price": price,
        "product": product,
        "unit_amount_decimal": unit_amount,
        "proration": get("proration"),
        "proration_details": get("proration_details"),
        "quantity": get("quantity"),
        "quantity_decimal": quantity_text(obj),
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
    item_id = _item_id(obj)
    guarded_upsert(
        writes,
        InvoiceItem,
        {"id": item_id},
        data,
        version,
        deleted_by=(source.event_id, source.created) if deleting else None,
    )
    if isinstance(data.get("invoice"), str):
        link_item(writes, item_id, data["invoice"], version)


def handle_invoiceitem_created(writes: Writes, obj: StripeObject, source: Source) -> None:
    upsert_item(writes, obj, source, deleting=False)


def handle_invoiceitem_deleted(writes: Writes, obj: StripeObject, source: Source) -> None:
    upsert_item(writes, obj, source, deleting=True)
