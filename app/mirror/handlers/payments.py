"""invoice_payment objects: from invoice_payment.paid and from lists embedded in invoices."""

from __future__ import annotations

from app.db.models import InvoicePayment
from app.json_text import json_text
from app.mirror.handlers.base import Source, StripeObject, as_dict, count_set, ref_id
from app.mirror.upsert import Version, guarded_upsert
from app.mirror.writes import Writes

# paid and canceled are terminal: no snapshot of another status may replace them, whatever its time.
TERMINAL_STATUSES = frozenset({"paid", "canceled"})
STATUS_RANK = {"open": 1, "paid": 2, "canceled": 2}


def payment_version(obj: StripeObject, source: Source) -> Version:
    status = obj.get("status")
    transitions_set = count_set(obj.get("status_transitions"))
    return source.version(
        1 if status in TERMINAL_STATUSES else 0,
        STATUS_RANK.get(status, 0) * 8 + transitions_set,  # type: ignore[arg-type]
    )


def payment_columns(obj: StripeObject) -> dict[str, object]:
    get = obj.get
    payment = get("payment") or {}
    payment_type = payment.get("type")
    stamps = as_dict(get("status_transitions"))
    return {
        "amount_paid": get("amount_paid"),
        "amount_requested": get("amount_requested"),
        "created": get("created"),
        "currency": get("currency"),
        "invoice": ref_id(get("invoice")),
        "is_default": get("is_default"),
        "livemode": get("livemode"),
        "payment_type": payment_type,
        "payment_id": ref_id(payment.get(payment_type)) if isinstance(payment_type, str) else None,
        "status": get("status"),
        "paid_at": stamps.get("paid_at"),
        "canceled_at": stamps.get("canceled_at"),
        "payload": json_text(obj),
    }


def upsert_invoice_payment(writes: Writes, obj: StripeObject, source: Source) -> None:
    payment_id = obj.get("id")
    if not isinstance(payment_id, str):
        raise ValueError("invoice_payment object has no id")
    guarded_upsert(
        writes, InvoicePayment, {"id": payment_id}, payment_columns(obj), payment_version(obj, source)
    )


# The event's object is the payment itself.
handle_invoice_payment_paid = upsert_invoice_payment
