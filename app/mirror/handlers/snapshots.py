"""Snapshot events (app.mirror.snapshots): pages of Stripe lists, single objects fetched again, and
lines loaded from a file, applied with the same guarded writes as events.

A fetched snapshot is versioned by the time Stripe read it (the event's ``created``, from the Date
header), so an event created after the fetch always wins over it and one created before never does;
within the same second the event wins (Source.version), unless the resource's own order says the
snapshot is further along (an invoice or payment status that only moves forward, a meter's
``updated``, a template's ``version``). Deleted objects appear as Stripe's stub ``{id, object,
deleted: true}`` and set the tombstone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.mirror.handlers.alerts import upsert_alert
from app.mirror.handlers.base import Source, StripeObject, as_dict
from app.mirror.handlers.invoices import upsert_embedded_payments, upsert_invoice
from app.mirror.handlers.items import upsert_item
from app.mirror.handlers.lines import complete_lines_of_version, write_lines
from app.mirror.handlers.meters import handle_meter_event
from app.mirror.handlers.payments import upsert_invoice_payment
from app.mirror.handlers.templates import upsert_template
from app.mirror.snapshots import LINES_SNAPSHOT_TYPE, SNAPSHOT_PREFIX, snapshot_type
from app.mirror.upsert import Version
from app.mirror.writes import Writes

ObjectHandler = Callable[[Writes, StripeObject, Source], None]


def _invoice(writes: Writes, obj: StripeObject, source: Source) -> None:
    deleted = obj.get("deleted") is True
    upsert_invoice(writes, obj, source, deleting=deleted)
    if not deleted:
        upsert_embedded_payments(writes, obj, source)


def _item(writes: Writes, obj: StripeObject, source: Source) -> None:
    upsert_item(writes, obj, source, deleting=obj.get("deleted") is True)


# Stripe's object name -> how one object of a snapshot is written.
OBJECT_HANDLERS: dict[str, ObjectHandler] = {
    "invoice": _invoice,
    "invoiceitem": _item,
    "invoice_payment": upsert_invoice_payment,
    "billing.meter": handle_meter_event,
    "billing.alert": upsert_alert,
    "invoice_rendering_template": upsert_template,
}


def _listed(body: StripeObject) -> list[Any]:
    listed = as_dict(body.get("data")).get("object")
    if (
        not isinstance(listed, dict)
        or listed.get("object") != "list"
        or not isinstance(listed.get("data"), list)
    ):
        raise ValueError("A snapshot event's data.object must be a list object")
    objects: list[Any] = listed["data"]
    return objects


def handle_snapshot(writes: Writes, body: StripeObject, source: Source) -> None:
    """Every object of the snapshot's list, each with its own guarded writes."""
    object_name = source.type[len(SNAPSHOT_PREFIX) :]
    write_one = OBJECT_HANDLERS[object_name]
    for obj in _listed(body):
        if (
            not isinstance(obj, dict)
            or obj.get("object") != object_name
            or not isinstance(obj.get("id"), str)
        ):
            raise ValueError(f"{source.type} lists something that is not an {object_name} with an id")
        write_one(writes, obj, source)


def handle_lines_snapshot(writes: Writes, body: StripeObject, source: Source) -> None:
    """Lines of one invoice from a file, written with the invoice version they are attributed to."""
    data = as_dict(body.get("data"))
    invoice_id, attributed = data.get("invoice"), data.get("attributed_to")
    if not isinstance(invoice_id, str) or not isinstance(attributed, list) or len(attributed) != 4:
        raise ValueError(f"{LINES_SNAPSHOT_TYPE} needs data.invoice and data.attributed_to")
    version = Version(*attributed)
    lines = _listed(body)
    for line in lines:
        if (
            not isinstance(line, dict)
            or line.get("object") != "line_item"
            or line.get("invoice")
            not in (
                None,
                invoice_id,
            )
        ):
            raise ValueError(f"{LINES_SNAPSHOT_TYPE} lists something that is not a line of {invoice_id}")
    complete = not as_dict(as_dict(body.get("data")).get("object")).get("has_more")
    write_lines(writes, invoice_id, lines, complete, version)
    if complete:
        complete_lines_of_version(writes, invoice_id, lines, version)


FETCHED_HANDLERS: dict[str, Callable[[Writes, StripeObject, Source], None]] = {
    **{snapshot_type(name): handle_snapshot for name in OBJECT_HANDLERS},
    LINES_SNAPSHOT_TYPE: handle_lines_snapshot,
}
