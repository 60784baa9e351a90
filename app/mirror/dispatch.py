"""Event type -> handler, and the routing of one event to the handler that plans its writes."""

from __future__ import annotations

from collections.abc import Callable

from app.mirror.envelope import Event
from app.mirror.handlers.alerts import handle_alert_triggered
from app.mirror.handlers.base import Handler, Source
from app.mirror.handlers.invoices import INVOICE_EVENT_TYPES, handle_invoice_event
from app.mirror.handlers.items import handle_invoiceitem_created, handle_invoiceitem_deleted
from app.mirror.handlers.meter_errors import METER_ERROR_EVENT_TYPES, handle_meter_error_report
from app.mirror.handlers.meters import METER_EVENT_TYPES, handle_meter_event
from app.mirror.handlers.payments import handle_invoice_payment_paid
from app.mirror.handlers.snapshots import FETCHED_HANDLERS
from app.mirror.writes import Writes

Apply = Callable[[Writes, Event], None]

SNAPSHOT_HANDLERS: dict[str, Handler] = {
    "invoice_payment.paid": handle_invoice_payment_paid,
    "invoiceitem.created": handle_invoiceitem_created,
    # Gone from Stripe since the end of 2023, but in older recordings: a newer snapshot like any other.
    "invoiceitem.updated": handle_invoiceitem_created,
    "invoiceitem.deleted": handle_invoiceitem_deleted,
    **dict.fromkeys(INVOICE_EVENT_TYPES, handle_invoice_event),
    **dict.fromkeys(METER_EVENT_TYPES, handle_meter_event),
    "billing.alert.triggered": handle_alert_triggered,
}

# Thin (v2) events carry no snapshot; their handlers get the whole notification body.
THIN_HANDLERS: dict[str, Handler] = dict.fromkeys(METER_ERROR_EVENT_TYPES, handle_meter_error_report)


def apply_event(writes: Writes, event: Event) -> None:
    """Record the writes of ``event``'s handler; an event type without one records none (ignored)."""
    writes.account = event.account
    source = Source(event.id, event.created, event.type)
    if event.thin:
        thin_handler = THIN_HANDLERS.get(event.type)
        if thin_handler is not None:
            thin_handler(writes, event.body, source)
        return
    fetched_handler = FETCHED_HANDLERS.get(event.type)
    if fetched_handler is not None:  # objects read from Stripe's API (app.mirror.snapshots)
        fetched_handler(writes, event.body, Source(event.id, event.created, event.type, True))
        return
    handler = SNAPSHOT_HANDLERS.get(event.type)
    obj = event.data_object
    if handler is not None and obj is not None:
        handler(writes, obj, source)
