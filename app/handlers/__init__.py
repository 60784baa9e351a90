"""Event type -> handler. A handler plans guarded writes (app.writes); it never touches the database."""

from __future__ import annotations

from app.handlers.alerts import handle_alert_triggered
from app.handlers.base import Handler
from app.handlers.invoices import INVOICE_EVENT_TYPES, handle_invoice_event
from app.handlers.items import handle_invoiceitem_created, handle_invoiceitem_deleted
from app.handlers.meter_errors import METER_ERROR_EVENT_TYPES, handle_meter_error_report
from app.handlers.meters import METER_EVENT_TYPES, handle_meter_event
from app.handlers.payments import handle_invoice_payment_paid

SNAPSHOT_HANDLERS: dict[str, Handler] = {
    "invoice_payment.paid": handle_invoice_payment_paid,
    "invoiceitem.created": handle_invoiceitem_created,
    "invoiceitem.deleted": handle_invoiceitem_deleted,
    **dict.fromkeys(INVOICE_EVENT_TYPES, handle_invoice_event),
    **dict.fromkeys(METER_EVENT_TYPES, handle_meter_event),
    "billing.alert.triggered": handle_alert_triggered,
}

# Thin (v2) events carry no snapshot; their handlers get the whole notification body.
THIN_HANDLERS: dict[str, Handler] = dict.fromkeys(METER_ERROR_EVENT_TYPES, handle_meter_error_report)
