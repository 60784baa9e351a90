"""invoice.* events. An invoice payload may embed its payments; those are mirrored like
invoice_payment.paid, versioned by the invoice event that carried them."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.handlers.base import Outcome, Source, StripeObject, dig
from app.handlers.payments import upsert_invoice_payment

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


def upsert_embedded_payments(session: Session, invoice: StripeObject, source: Source) -> Outcome:
    payments = dig(invoice, "payments", "data")
    if not isinstance(payments, list) or not payments:
        return Outcome.IGNORED
    written = [upsert_invoice_payment(session, payment, source) for payment in payments]
    return Outcome.APPLIED if any(written) else Outcome.STALE


def handle_invoice_event(session: Session, obj: StripeObject, source: Source) -> Outcome:
    return upsert_embedded_payments(session, obj, source)
