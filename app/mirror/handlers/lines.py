"""Invoice line items: the `lines` list of an invoice snapshot (or a backfilled lines page).

Lines are written with the version of the snapshot that listed them. ``invoice_line_sets`` remembers,
per invoice, the newest version that listed every line (``has_more`` false); lines written by an
older version are deleted in one guarded statement. Invoice items referenced by a line learn their
invoice in ``invoice_item_invoices``. The result depends only on the set of snapshots seen, never on
their order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from app.db.models import InvoiceItemInvoice, InvoiceLineItem, InvoiceLineSet
from app.json_text import json_text
from app.mirror.handlers.base import StripeObject, as_dict, ref_id
from app.mirror.upsert import Version, delete_superseded, guarded_upsert, guarded_upsert_many
from app.mirror.writes import Writes


def line_parent_details(line: StripeObject) -> dict[str, Any]:
    """The parent block named by parent.type (invoice_item_details or subscription_item_details)."""
    parent = line.get("parent")
    if not isinstance(parent, dict):
        return {}
    kind = parent.get("type")
    return as_dict(parent.get(kind)) if isinstance(kind, str) else {}


def line_columns(line: StripeObject, invoice_id: str, position: int) -> dict[str, Any]:
    get = line.get
    details = line_parent_details(line)
    pricing = get("pricing") or {}
    period = get("period") or {}
    discounts = get("discounts")
    price = as_dict(as_dict(pricing).get("price_details"))  # a pricing that is not an object fails below
    return {
        "invoice": invoice_id,
        "position": position,
        "amount": get("amount"),
        "currency": get("currency"),
        "description": get("description"),
        "discount_amounts": get("discount_amounts"),
        "discountable": get("discountable"),
        "discounts": [ref_id(d) or d for d in discounts] if isinstance(discounts, list) else discounts,
        "livemode": get("livemode"),
        "metadata": get("metadata"),
        "parent_type": as_dict(get("parent")).get("type"),
        "invoice_item": details.get("invoice_item"),
        "subscription_item": details.get("subscription_item"),
        "subscription": ref_id(details.get("subscription")) or ref_id(get("subscription")),
        "proration": details.get("proration"),
        "proration_details": details.get("proration_details"),
        "period_start": period.get("start"),
        "period_end": period.get("end"),
        "pretax_credit_amounts": get("pretax_credit_amounts"),
        "pricing_type": pricing.get("type"),
        "price": ref_id(price.get("price")),
        "product": price.get("product"),
        "unit_amount_decimal": pricing.get("unit_amount_decimal"),
        "quantity": get("quantity"),
        "quantity_decimal": get("quantity_decimal"),
        "subtotal": get("subtotal"),
        "taxes": get("taxes"),
        "payload": json_text(line),
    }


def write_lines(
    writes: Writes, invoice_id: str, lines: Sequence[Any], complete: bool, version: Version
) -> None:
    """Upsert ``lines`` (in invoice order) and drop lines superseded by the newest complete list.

    The invoice row must already exist in this transaction (its upsert also locks it on PostgreSQL,
    which serialises everything below for one invoice across receivers).
    """
    rows = []
    item_ids: set[str] = set()
    for position, line in enumerate(lines):
        if not isinstance(line, dict) or not isinstance(line.get("id"), str):
            continue
        columns = line_columns(line, invoice_id, position)
        rows.append(({"id": line["id"]}, columns))
        if isinstance(columns["invoice_item"], str):
            item_ids.add(columns["invoice_item"])
    guarded_upsert_many(writes, InvoiceLineItem, rows, version)
    if complete:
        guarded_upsert(writes, InvoiceLineSet, {"invoice": invoice_id}, {}, version)
    delete_superseded(writes, InvoiceLineItem, "invoice", InvoiceLineSet, "invoice", invoice_id)
    # Sorted so that two transactions touching the same items lock them in the same order.
    links = [({"invoice_item": item_id}, {"invoice": invoice_id}) for item_id in sorted(item_ids)]
    guarded_upsert_many(writes, InvoiceItemInvoice, links, version)


def _lines_not_in(dialect: str) -> str:
    """SQL: the lines of an invoice, written by a version at most the given one, whose id is not in
    a list of ids (one JSON array on SQLite, one array on PostgreSQL)."""
    mark = "?" if dialect == "sqlite" else "%s"
    listed = "id NOT IN (SELECT value FROM json_each(?))" if dialect == "sqlite" else "NOT (id = ANY(%s))"
    return (
        f"DELETE FROM invoice_line_items WHERE invoice = {mark}"
        f" AND (version_precedence, last_event_created, version_tiebreak, last_event_id)"
        f" <= ({mark}, {mark}, {mark}, {mark}) AND {listed}"
    )


def complete_lines_of_version(
    writes: Writes, invoice_id: str, lines: Sequence[Any], version: Version
) -> None:
    """Plan, for a complete list of lines known at ``version`` (read after the invoice snapshot of
    that version): lines of the invoice it no longer names are removed unless a newer version wrote
    them, and ``lines_incomplete`` is cleared if that version is still the invoice's."""
    dialect = writes.dialect.name
    listed = [line["id"] for line in lines if isinstance(line, dict) and isinstance(line.get("id"), str)]
    writes.add(
        _lines_not_in(dialect), (invoice_id, *version, json_text(listed) if dialect == "sqlite" else listed)
    )
    mark = "?" if dialect == "sqlite" else "%s"
    writes.add(
        f"UPDATE invoices SET lines_incomplete = {'0' if dialect == 'sqlite' else 'false'} WHERE id = {mark}"
        f" AND (version_precedence, last_event_created, version_tiebreak, last_event_id)"
        f" = ({mark}, {mark}, {mark}, {mark})",
        (invoice_id, *version),
    )
