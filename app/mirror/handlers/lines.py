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

from app.db.models import Invoice, InvoiceItemInvoice, InvoiceLineItem, InvoiceLineSet
from app.json_text import json_text
from app.mirror.handlers.base import StripeObject, as_dict, embedded_price, quantity_text, ref_id
from app.mirror.upsert import (
    VERSION_COLUMNS,
    Version,
    delete_superseded,
    footprint_of_parent,
    guarded_upsert,
    guarded_upsert_many,
    table_of,
)
from app.mirror.writes import FOOTPRINTS, KEYED_STATEMENTS, Writes


def line_parent_details(line: StripeObject) -> dict[str, Any]:
    """The parent block named by parent.type (invoice_item_details or subscription_item_details)."""
    parent = line.get("parent")
    if not isinstance(parent, dict):
        return {}
    kind = parent.get("type")
    return as_dict(parent.get(kind)) if isinstance(kind, str) else {}


# A line's legacy ``type`` (before 2025-03-31.basil) as the ``parent.type`` that replaced it.
LEGACY_PARENT_TYPES = {"invoiceitem": "invoice_item_details", "subscription": "subscription_item_details"}


def legacy_taxes(line: StripeObject) -> Any:
    """``taxes`` of a line from before 2025-03-31.basil, from its ``tax_amounts`` (the same facts: the
    rate, the amount, inclusive or not, why and on what amount)."""
    amounts = line.get("tax_amounts")
    if not isinstance(amounts, list):
        return None
    return [
        {
            "type": "tax_rate_details",
            "amount": tax.get("amount"),
            "tax_behavior": "inclusive" if tax.get("inclusive") else "exclusive",
            "tax_rate_details": {"tax_rate": ref_id(tax.get("tax_rate"))},
            "taxability_reason": tax.get("taxability_reason"),
            "taxable_amount": tax.get("taxable_amount"),
        }
        for tax in amounts
        if isinstance(tax, dict)
    ]


def line_origin(line: StripeObject) -> dict[str, Any]:
    """What made the line, in either shape: ``parent`` (since 2025-03-31.basil) or, before, the
    top-level ``type``, ``invoice_item``, ``subscription_item``, ``proration``, ``proration_details``."""
    get = line.get
    if "parent" in line:
        details = line_parent_details(line)
        return {
            "parent_type": as_dict(get("parent")).get("type"),
            "invoice_item": details.get("invoice_item"),
            "subscription_item": details.get("subscription_item"),
            "subscription": ref_id(details.get("subscription")) or ref_id(get("subscription")),
            "proration": details.get("proration"),
            "proration_details": details.get("proration_details"),
        }
    kind = get("type")
    return {
        "parent_type": LEGACY_PARENT_TYPES.get(kind) if isinstance(kind, str) else None,
        "invoice_item": ref_id(get("invoice_item")),
        "subscription_item": ref_id(get("subscription_item")),
        "subscription": ref_id(get("subscription")),
        "proration": get("proration"),
        "proration_details": get("proration_details"),
    }


def line_columns(line: StripeObject, invoice_id: str, position: int) -> dict[str, Any]:
    get = line.get
    period = get("period") or {}
    discounts = get("discounts")
    price, product, pricing_type = embedded_price(line)
    basil = "pricing" in line or "parent" in line
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
        **line_origin(line),
        "period_start": period.get("start"),
        "period_end": period.get("end"),
        "pretax_credit_amounts": get("pretax_credit_amounts"),
        "pricing_type": pricing_type,
        "price": price,
        "product": product,
        # Before basil no field holds the line's own unit amount (unit_amount_excluding_tax is another one).
        "unit_amount_decimal": as_dict(get("pricing")).get("unit_amount_decimal") if basil else None,
        "quantity": get("quantity"),
        "quantity_decimal": quantity_text(line),
        "subtotal": get("subtotal"),
        "taxes": get("taxes") if "taxes" in line else legacy_taxes(line),
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
    links = [
        ({"invoice_item": item_id, "invoice": invoice_id}, {"present": True}) for item_id in sorted(item_ids)
    ]
    guarded_upsert_many(writes, InvoiceItemInvoice, links, version)
    take_off_superseded(writes, invoice_id)


def link_item(writes: Writes, item_id: str, invoice_id: str, version: Version) -> None:
    """An item's own snapshot says it is on ``invoice_id``: evidence like a line of that invoice, and
    taken off the same way when a newer complete line list of the invoice no longer names it."""
    guarded_upsert(
        writes,
        InvoiceItemInvoice,
        {"invoice_item": item_id, "invoice": invoice_id},
        {"present": True},
        version,
    )
    take_off_superseded(writes, invoice_id, item_id)


def take_off_superseded(writes: Writes, invoice_id: str, item_id: str | None = None) -> None:
    """Plan: the items of ``invoice_id`` (or only ``item_id``) seen on it by a version older than the
    invoice's newest complete line list are no longer on it (``present`` false, with that list's
    version: rows already off get it too, so the result is the same whatever the order of events).
    One UPDATE that compares in the database."""
    mark = "?" if writes.dialect.name == "sqlite" else "%s"
    link_version = ", ".join(f"invoice_item_invoices.{name}" for name in VERSION_COLUMNS)
    list_version = ", ".join(f"s.{name}" for name in VERSION_COLUMNS)
    set_version = ", ".join(f"{name} = s.{name}" for name in VERSION_COLUMNS)
    sql = (
        f"UPDATE invoice_item_invoices SET present = FALSE, {set_version} FROM invoice_line_sets AS s"
        f" WHERE s.invoice = invoice_item_invoices.invoice AND invoice_item_invoices.invoice = {mark}"
        f" AND ({link_version}) < ({list_version})"
    )
    if item_id is None:
        _add_about_lines(writes, sql, (invoice_id,), keyed=True)
    else:
        _add_about_lines(
            writes,
            f"{sql} AND invoice_item_invoices.invoice_item = {mark}",
            (invoice_id, item_id),
            keyed=True,
        )


_ABOUT_LINES = footprint_of_parent(table_of(InvoiceLineSet).name)


def _add_about_lines(
    writes: Writes, sql: str, params: tuple[Any, ...], *, invoice_row: bool = False, keyed: bool = False
) -> None:
    """Plan a statement about the lines (and line items) of the invoice its first parameter names;
    its footprint is that invoice's line set (and, with ``invoice_row``, the invoice's row too);
    ``keyed``: it finds its rows through the invoice's index (KEYED_STATEMENTS)."""
    if sql not in FOOTPRINTS:
        if keyed:
            KEYED_STATEMENTS.add(sql)
        if invoice_row:
            invoice_table = table_of(Invoice).name
            FOOTPRINTS[sql] = lambda row: (*_ABOUT_LINES(row), (invoice_table, row[0]))
        else:
            FOOTPRINTS[sql] = _ABOUT_LINES
    writes.add(sql, params)


def _not_listed(dialect: str, table: str, listed_column: str, set_sql: str) -> str:
    """SQL that changes (``set_sql``: "DELETE" or "SET ...") the rows of one invoice in ``table``,
    written by a version at most the given one, whose ``listed_column`` is not in a list of ids (one
    JSON array on SQLite, one array on PostgreSQL)."""
    mark = "?" if dialect == "sqlite" else "%s"
    listed = (
        f"{listed_column} NOT IN (SELECT value FROM json_each(?))"
        if dialect == "sqlite"
        else f"NOT ({listed_column} = ANY(%s))"
    )
    head = f"DELETE FROM {table}" if set_sql == "DELETE" else f"UPDATE {table} {set_sql}"
    return (
        f"{head} WHERE invoice = {mark}"
        f" AND ({', '.join(VERSION_COLUMNS)}) <= ({mark}, {mark}, {mark}, {mark}) AND {listed}"
    )


def complete_lines_of_version(
    writes: Writes, invoice_id: str, lines: Sequence[Any], version: Version
) -> None:
    """Plan, for a complete list of lines known at ``version`` (read after the invoice snapshot of
    that version): lines of the invoice it no longer names are removed, and the items it no longer
    names are off it, unless a newer version wrote them; ``lines_incomplete`` is cleared if that
    version is still the invoice's."""
    dialect = writes.dialect.name
    ids = [line["id"] for line in lines if isinstance(line, dict) and isinstance(line.get("id"), str)]
    items = sorted({origin for line in lines if isinstance(origin := line_origin(line)["invoice_item"], str)})

    def as_array(values: list[str]) -> Any:
        return json_text(values) if dialect == "sqlite" else values

    _add_about_lines(
        writes,
        _not_listed(dialect, "invoice_line_items", "id", "DELETE"),
        (invoice_id, *version, as_array(ids)),
    )
    # Items the list no longer names are off the invoice, unless a newer version put them there.
    taken_off = "SET present = FALSE"
    _add_about_lines(
        writes,
        _not_listed(dialect, "invoice_item_invoices", "invoice_item", taken_off),
        (invoice_id, *version, as_array(items)),
    )
    mark = "?" if dialect == "sqlite" else "%s"
    _add_about_lines(
        writes,
        f"UPDATE invoices SET lines_incomplete = {'0' if dialect == 'sqlite' else 'false'} WHERE id = {mark}"
        f" AND (version_precedence, last_event_created, version_tiebreak, last_event_id)"
        f" = ({mark}, {mark}, {mark}, {mark})",
        (invoice_id, *version),
        invoice_row=True,
    )
