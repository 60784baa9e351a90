"""invoice.* events: the invoice itself, its lines, the invoice items those lines reference and the
payments it may embed (mirrored like invoice_payment.paid), all versioned by the invoice event."""

from __future__ import annotations

from typing import Any

from app.db.models import Invoice
from app.json_text import json_text
from app.mirror.handlers.base import Source, StripeObject, as_dict, count_set, ref_id
from app.mirror.handlers.lines import write_lines
from app.mirror.handlers.payments import upsert_invoice_payment
from app.mirror.upsert import NO_DATA, Version, guarded_upsert
from app.mirror.writes import Writes

# invoice.upcoming is left out on purpose: its invoice has no id and must not be mirrored.
INVOICE_EVENT_TYPES = (
    "invoice.created",
    "invoice.updated",
    "invoice.deleted",
    "invoice.finalized",
    "invoice.finalization_failed",
    "invoice.sent",
    "invoice.will_be_due",
    "invoice.overdue",
    "invoice.payment_action_required",
    "invoice.payment_attempt_required",
    "invoice.payment_failed",
    "invoice.payment_succeeded",
    "invoice.paid",
    "invoice.overpaid",
    "invoice.marked_uncollectible",
    "invoice.voided",
)

# paid and void are terminal: no snapshot of another status replaces them, whatever its time. Within
# one second the rank (then the number of status-transition timestamps set) decides, so a tie never
# moves an invoice backwards and a set timestamp never returns to null.
TERMINAL_STATUSES = frozenset({"paid", "void"})
STATUS_RANK = {"draft": 0, "open": 1, "uncollectible": 2, "paid": 3, "void": 3}
STUB_KEYS = frozenset({"id", "object", "deleted"})


def invoice_version(obj: StripeObject, source: Source) -> Version:
    status = obj.get("status")
    rank = STATUS_RANK.get(status, 0) if isinstance(status, str) else 0
    return source.version(
        1 if status in TERMINAL_STATUSES else 0, rank * 8 + count_set(obj.get("status_transitions"))
    )


def invoice_origin(obj: StripeObject) -> dict[str, Any]:
    """What the invoice is for, in either shape: ``parent`` since 2025-03-31.basil, the top-level
    ``subscription`` and ``quote`` before it."""
    if "parent" in obj:
        parent = as_dict(obj.get("parent"))
        return {
            "parent_type": parent.get("type"),
            "subscription": ref_id(as_dict(parent.get("subscription_details")).get("subscription")),
            "quote": ref_id(as_dict(parent.get("quote_details")).get("quote")),
        }
    subscription, quote = ref_id(obj.get("subscription")), ref_id(obj.get("quote"))
    kind = "subscription_details" if subscription else "quote_details" if quote else None
    return {"parent_type": kind, "subscription": subscription, "quote": quote}


def how_paid(obj: StripeObject) -> tuple[str | None, str | None]:
    """(charge, payment_intent) of the invoice: top-level before 2025-03-31.basil; since, those of its
    default payment when the invoice carries its ``payments`` (an includable list)."""
    if "charge" in obj or "payment_intent" in obj:
        return ref_id(obj.get("charge")), ref_id(obj.get("payment_intent"))
    listed = as_dict(obj.get("payments")).get("data")
    if isinstance(listed, list):
        for payment in listed:
            if isinstance(payment, dict) and payment.get("is_default"):
                method = as_dict(payment.get("payment"))
                return ref_id(method.get("charge")), ref_id(method.get("payment_intent"))
    return None, None


def invoice_columns(obj: StripeObject) -> dict[str, Any]:
    get = obj.get
    transitions = get("status_transitions")
    stamps = as_dict(transitions)
    lines = get("lines")
    charge, payment_intent = how_paid(obj)
    return {
        "customer": ref_id(get("customer")),
        "customer_account": get("customer_account"),
        "customer_email": get("customer_email"),
        "customer_name": get("customer_name"),
        "status": get("status"),
        "status_transitions": transitions,
        "finalized_at": stamps.get("finalized_at"),
        "paid_at": stamps.get("paid_at"),
        "marked_uncollectible_at": stamps.get("marked_uncollectible_at"),
        "voided_at": stamps.get("voided_at"),
        "amount_due": get("amount_due"),
        "amount_paid": get("amount_paid"),
        "amount_paid_off_stripe": get("amount_paid_off_stripe"),
        "amount_remaining": get("amount_remaining"),
        "amount_overpaid": get("amount_overpaid"),
        "amount_shipping": get("amount_shipping"),
        "subtotal": get("subtotal"),
        "subtotal_excluding_tax": get("subtotal_excluding_tax"),
        "total": get("total"),
        "total_excluding_tax": get("total_excluding_tax"),
        "starting_balance": get("starting_balance"),
        "ending_balance": get("ending_balance"),
        "currency": get("currency"),
        "period_start": get("period_start"),
        "period_end": get("period_end"),
        **invoice_origin(obj),
        "charge": charge,
        "payment_intent": payment_intent,
        "number": get("number"),
        "billing_reason": get("billing_reason"),
        "collection_method": get("collection_method"),
        "due_date": get("due_date"),
        "livemode": get("livemode"),
        "metadata": get("metadata"),
        "created": get("created"),
        "test_clock": ref_id(get("test_clock")),
        "lines_incomplete": bool(lines.get("has_more")) if isinstance(lines, dict) else None,
        "payload": json_text(obj),
    }


def upsert_embedded_payments(writes: Writes, invoice: StripeObject, source: Source) -> None:
    payments = as_dict(invoice.get("payments")).get("data")
    if isinstance(payments, list):
        for payment in payments:
            upsert_invoice_payment(writes, payment, source)


def upsert_invoice(writes: Writes, obj: StripeObject, source: Source, *, deleting: bool) -> None:
    """The invoice row, then its lines; ``deleting`` also sets the tombstone."""
    invoice_id = obj["id"]
    stub = deleting and set(obj) <= STUB_KEYS
    version = NO_DATA if stub else invoice_version(obj, source)
    guarded_upsert(
        writes,
        Invoice,
        {"id": invoice_id},
        {} if stub else invoice_columns(obj),
        version,
        deleted_by=(source.event_id, source.created) if deleting else None,
    )
    lines = obj.get("lines")
    if isinstance(lines, dict) and isinstance(lines.get("data"), list):
        complete = not lines.get("has_more")
        write_lines(writes, invoice_id, lines["data"], complete, version)


def handle_invoice_event(writes: Writes, obj: StripeObject, source: Source) -> None:
    if not isinstance(obj.get("id"), str):
        return  # an invoice without an id (a preview) is never mirrored: ignored
    upsert_invoice(writes, obj, source, deleting=source.type == "invoice.deleted")
    upsert_embedded_payments(writes, obj, source)
