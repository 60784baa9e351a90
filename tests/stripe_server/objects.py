"""Builders of Stripe-shaped objects (fields and shapes as in Stripe's API fixtures at 2026-07-29.dahlia),
with ids that do not sort by time, as Stripe's do not."""

from __future__ import annotations

import random
import string
from typing import Any

from tests.stripe_server.app import API_VERSION

_ALPHABET = string.ascii_letters + string.digits
_ids = random.Random(2026)


def new_id(prefix: str) -> str:
    return f"{prefix}_{''.join(_ids.choices(_ALPHABET, k=24))}"


def line_item(
    *, amount: int = 1000, invoice_item: str | None = None, line_id: str | None = None
) -> dict[str, Any]:
    """A line of an invoice (``invoice`` is set by the store)."""
    item = invoice_item or new_id("ii")
    return {
        "id": line_id or new_id("il"),
        "object": "line_item",
        "amount": amount,
        "currency": "usd",
        "description": "Usage",
        "discount_amounts": [],
        "discountable": True,
        "discounts": [],
        "invoice": None,
        "livemode": False,
        "metadata": {},
        "parent": {
            "invoice_item_details": {
                "invoice_item": item,
                "proration": False,
                "proration_details": {"credited_items": None},
                "subscription": None,
            },
            "subscription_item_details": None,
            "type": "invoice_item_details",
        },
        "period": {"end": 1_767_225_600, "start": 1_767_225_600},
        "pretax_credit_amounts": [],
        "pricing": {
            "price_details": {"price": "price_1", "product": "prod_1"},
            "type": "price_details",
            "unit_amount_decimal": "1000",
        },
        "quantity": 1,
        "quantity_decimal": "1",
        "subtotal": amount,
        "taxes": [],
    }


def invoice(
    *,
    created: int,
    invoice_id: str | None = None,
    customer: str = "cus_test",
    status: str = "open",
    lines: int | list[dict[str, Any]] = 1,
    collection_method: str = "charge_automatically",
    subscription: str | None = None,
    due_date: int | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """An invoice with all its lines in ``lines.data`` (an int: that many lines); the store embeds 10."""
    all_lines = [line_item() for _ in range(lines)] if isinstance(lines, int) else lines
    total = sum(line["amount"] for line in all_lines)
    paid = status == "paid"
    obj: dict[str, Any] = {
        "id": invoice_id or new_id("in"),
        "object": "invoice",
        "account_country": "US",
        "account_name": "billing-mirror test",
        "amount_due": total,
        "amount_overpaid": 0,
        "amount_paid": total if paid else 0,
        "amount_remaining": 0 if paid else total,
        "amount_shipping": 0,
        "attempt_count": 1 if paid else 0,
        "attempted": paid,
        "auto_advance": status == "draft",
        "automatic_tax": {
            "enabled": False,
            "liability": None,
            "provider": None,
            "status": None,
            "disabled_reason": None,
        },
        "billing_reason": "subscription_cycle" if subscription else "manual",
        "collection_method": collection_method,
        "created": created,
        "currency": "usd",
        "customer": customer,
        "customer_account": None,
        "customer_email": "jenny@example.com",
        "customer_name": "Jenny Rosen",
        "default_payment_method": None,
        "description": None,
        "discounts": [],
        "due_date": due_date if collection_method == "send_invoice" else None,
        "effective_at": None if status == "draft" else created,
        "ending_balance": None if status == "draft" else 0,
        "hosted_invoice_url": None,
        "issuer": {"type": "self"},
        "last_finalization_error": None,
        "lines": {"object": "list", "data": all_lines, "has_more": False, "url": "/v1/invoices/x/lines"},
        "livemode": False,
        "metadata": {},
        "number": None if status == "draft" else f"TEST-{created % 100_000:05d}",
        "parent": (
            {
                "quote_details": None,
                "subscription_details": {"metadata": {}, "subscription": subscription},
                "type": "subscription_details",
            }
            if subscription
            else None
        ),
        "period_end": created,
        "period_start": created,
        "post_payment_credit_notes_amount": 0,
        "pre_payment_credit_notes_amount": 0,
        "receipt_number": None,
        "rendering": None,
        "starting_balance": 0,
        "statement_descriptor": None,
        "status": status,
        "status_transitions": {
            "finalized_at": None if status == "draft" else created,
            "marked_uncollectible_at": created if status == "uncollectible" else None,
            "paid_at": created if paid else None,
            "voided_at": created if status == "void" else None,
        },
        "subtotal": total,
        "subtotal_excluding_tax": total,
        "test_clock": None,
        "total": total,
        "total_discount_amounts": [],
        "total_excluding_tax": total,
        "total_pretax_credit_amounts": [],
        "total_taxes": [],
        "webhooks_delivered_at": created,
    }
    obj.update(fields)
    return obj


def invoice_item(
    *, date: int, customer: str = "cus_test", invoice: str | None = None, amount: int = 1000, **fields: Any
) -> dict[str, Any]:
    """An invoice item: its creation time is ``date`` (items have no ``created``)."""
    obj: dict[str, Any] = {
        "id": new_id("ii"),
        "object": "invoiceitem",
        "amount": amount,
        "currency": "usd",
        "customer": customer,
        "customer_account": None,
        "date": date,
        "description": "One-off charge",
        "discountable": True,
        "discounts": [],
        "invoice": invoice,
        "livemode": False,
        "metadata": {},
        "net_amount": amount,
        "parent": None,
        "period": {"end": date, "start": date},
        "pricing": {
            "price_details": {"price": "price_1", "product": "prod_1"},
            "type": "price_details",
            "unit_amount_decimal": str(amount),
        },
        "proration": False,
        "quantity": 1,
        "quantity_decimal": "1",
        "tax_rates": [],
        "test_clock": None,
    }
    obj.update(fields)
    return obj


def invoice_payment(
    *,
    created: int,
    invoice: str,
    status: str = "paid",
    amount: int = 1000,
    payment_intent: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "id": new_id("inpay"),
        "object": "invoice_payment",
        "amount_paid": amount if status == "paid" else None,
        "amount_requested": amount,
        "created": created,
        "currency": "usd",
        "invoice": invoice,
        "is_default": True,
        "livemode": False,
        "payment": {"payment_intent": payment_intent or new_id("pi"), "type": "payment_intent"},
        "status": status,
        "status_transitions": {
            "canceled_at": created if status == "canceled" else None,
            "paid_at": created if status == "paid" else None,
        },
    }
    obj.update(fields)
    return obj


def meter(
    *, created: int, status: str = "active", event_name: str = "api_requests", **fields: Any
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "id": new_id("mtr"),
        "object": "billing.meter",
        "created": created,
        "customer_mapping": {"event_payload_key": "stripe_customer_id", "type": "by_id"},
        "default_aggregation": {"formula": "sum"},
        "display_name": event_name.replace("_", " ").title(),
        "event_name": event_name,
        "event_time_window": None,
        "livemode": False,
        "status": status,
        "status_transitions": {"deactivated_at": created if status == "inactive" else None},
        "updated": created,
        "value_settings": {"event_payload_key": "value"},
    }
    obj.update(fields)
    return obj


def alert(*, meter_id: str, status: str = "active", gte: int = 1000, **fields: Any) -> dict[str, Any]:
    """A usage-threshold alert (alerts carry no ``created``: the store orders them by the one it is given)."""
    obj: dict[str, Any] = {
        "id": new_id("alrt"),
        "object": "billing.alert",
        "alert_type": "usage_threshold",
        "livemode": False,
        "status": status,
        "title": f"Usage over {gte}",
        "usage_threshold": {"filters": None, "gte": gte, "meter": meter_id, "recurrence": "one_time"},
    }
    obj.update(fields)
    return obj


def rendering_template(
    *, created: int, status: str = "active", version: int = 1, **fields: Any
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "id": new_id("inrtem"),
        "object": "invoice_rendering_template",
        "created": created,
        "livemode": False,
        "metadata": {},
        "nickname": "Standard",
        "status": status,
        "version": version,
    }
    obj.update(fields)
    return obj


def event(
    event_type: str,
    obj: dict[str, Any],
    *,
    created: int,
    pending_webhooks: int = 0,
    api_version: str = API_VERSION,
) -> dict[str, Any]:
    """A snapshot event whose ``data.object`` is kept as rendered when it was created."""
    return {
        "id": new_id("evt"),
        "object": "event",
        "api_version": api_version,
        "created": created,
        "data": {"object": obj},
        "livemode": False,
        "pending_webhooks": pending_webhooks,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
    }
