"""SQL tables of the mirror. Column names are a public interface (see README, "SQL schema").

Every mirrored row carries the version of the event that last wrote its data:
(version_precedence, last_event_created, version_tiebreak, last_event_id), compared as a tuple.
Precedence lets terminal states win over same-object snapshots that Stripe rendered earlier; the
tiebreak orders events from the same second. Tombstones are a separate, monotonic flag.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Index,
    LargeBinary,
    Text,
    func,
    select,
    text,
    tuple_,
)
from sqlmodel import Field, SQLModel

# Set before any table exists so that every constraint and index has a stable, predictable name
# in migrations on both SQLite and PostgreSQL.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def _ts(*, index: bool = False, nullable: bool = True) -> Any:
    return Field(default=None, sa_type=BigInteger, index=index, nullable=nullable)


def _json(name: str) -> Any:
    return Field(default=None, sa_column=Column(name, JSON, nullable=True))


class StripeEvent(SQLModel, table=True):
    """Every verified delivery, stored before the receiver answers 2xx."""

    __tablename__ = "stripe_events"

    id: str = Field(primary_key=True)
    type: str = Field(index=True)
    created: int = Field(sa_type=BigInteger, index=True)
    api_version: str | None = None
    livemode: bool
    account: str | None = None
    thin: bool = False
    object_id: str | None = Field(default=None, index=True)
    payload: str = Field(sa_column=Column(Text, nullable=False))
    received_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    processed_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    # applied | stale | ignored | failed
    outcome: str = Field(index=True)
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    attempts: int = 1
    # webhook | events_api | sync | reconcile | refresh | file | replay (app.mirror.envelope.EventSource)
    source: str = Field(
        default="webhook", sa_column=Column(Text, nullable=False, server_default=text("'webhook'"))
    )


class DeadLetter(SQLModel, table=True):
    """A verified delivery that is not an event the mirror can store (not UTF-8 JSON, not an event
    envelope, or a value no column holds), kept byte for byte with the reason, so nothing verified
    is lost and `billing-mirror events list --refused` shows it."""

    __tablename__ = "dead_letters"

    id: int | None = Field(default=None, primary_key=True)
    received_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False, index=True))
    # webhook | events_api | ... (app.mirror.envelope.EventSource)
    source: str = Field(sa_column=Column(Text, nullable=False))
    # invalid_json | invalid_event | unstorable
    reason: str = Field(sa_column=Column(Text, nullable=False))
    message: str = Field(sa_column=Column(Text, nullable=False))
    # What the body said its id and type were, when it said (made storable, cut to 255 characters).
    event_id: str | None = Field(default=None, index=True)
    event_type: str | None = None
    body: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


def dead_letter_summary() -> list[Any]:
    """The columns that list a dead letter (everything but its body, and the body's size)."""
    letters = DeadLetter.__table__  # type: ignore[attr-defined]
    names = ("id", "received_at", "source", "reason", "message", "event_id", "event_type")
    return [*(letters.c[name] for name in names), func.length(letters.c.body).label("size")]


class MirrorVersion(SQLModel):
    last_event_id: str
    last_event_created: int = Field(sa_type=BigInteger)
    version_precedence: int = 0
    version_tiebreak: int = Field(default=0, sa_type=BigInteger)
    # The Connect account of the event that wrote the row (null: the platform's own).
    account: str | None = None


class Tombstone(SQLModel):
    deleted: bool = False
    deleted_by_event_id: str | None = None
    deleted_by_event_created: int | None = _ts()


# Lists are read newest first by (creation time, id): every list filter has an index that starts with
# the filtered column(s) and ends with that order, so a page is one index range scan with no sort.
PENDING = "invoice IS NULL"


def _partial(name: str, *columns: str, where: str) -> Index:
    return Index(name, *columns, sqlite_where=text(where), postgresql_where=text(where))


class InvoicePayment(MirrorVersion, table=True):
    __tablename__ = "invoice_payments"
    __table_args__ = (
        Index("ix_invoice_payments_created_id", "created", "id"),
        Index("ix_invoice_payments_invoice_created_id", "invoice", "created", "id"),
        Index("ix_invoice_payments_status_created_id", "status", "created", "id"),
        Index("ix_invoice_payments_payment_type_created_id", "payment_type", "created", "id"),
        # Leads with payment_id, so it also serves lookups by payment id alone.
        Index(
            "ix_invoice_payments_payment_id_type_created_id", "payment_id", "payment_type", "created", "id"
        ),
    )

    id: str = Field(primary_key=True)
    amount_paid: int | None = Field(default=None, sa_type=BigInteger)
    amount_requested: int | None = Field(default=None, sa_type=BigInteger)
    created: int | None = _ts()
    currency: str | None = None
    invoice: str | None = None
    is_default: bool | None = None
    livemode: bool | None = None
    payment_type: str | None = None
    payment_id: str | None = None
    status: str | None = None
    paid_at: int | None = _ts(index=True)
    canceled_at: int | None = _ts(index=True)
    payload: str = Field(sa_column=Column(Text, nullable=False))


class InvoiceItem(MirrorVersion, Tombstone, table=True):
    __tablename__ = "invoice_items"
    __table_args__ = (
        Index("ix_invoice_items_date_id", "date", "id"),
        Index("ix_invoice_items_customer_date_id", "customer", "date", "id"),
        Index("ix_invoice_items_invoice_date_id", "invoice", "date", "id"),
        # Pending items (not yet on an invoice) are few; small partial indexes find them directly.
        _partial("ix_invoice_items_pending_date_id", "date", "id", where=PENDING),
        _partial("ix_invoice_items_pending_customer_date_id", "customer", "date", "id", where=PENDING),
    )

    id: str = Field(primary_key=True)
    amount: int | None = Field(default=None, sa_type=BigInteger)
    currency: str | None = None
    customer: str | None = None
    customer_account: str | None = None
    date: int | None = _ts()
    description: str | None = Field(default=None, sa_type=Text)
    discountable: bool | None = None
    discounts: list[Any] | None = _json("discounts")
    invoice: str | None = None
    livemode: bool | None = None
    metadata_: dict[str, Any] | None = _json("metadata")
    net_amount: int | None = Field(default=None, sa_type=BigInteger)
    parent_type: str | None = None
    subscription: str | None = Field(default=None, index=True)
    subscription_item: str | None = None
    period_start: int | None = _ts()
    period_end: int | None = _ts()
    pricing_type: str | None = None
    price: str | None = None
    product: str | None = None
    unit_amount_decimal: str | None = None
    proration: bool | None = None
    proration_details: dict[str, Any] | None = _json("proration_details")
    quantity: int | None = Field(default=None, sa_type=BigInteger)
    quantity_decimal: str | None = None
    tax_rates: list[Any] | None = _json("tax_rates")
    test_clock: str | None = None
    payload: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class Invoice(MirrorVersion, Tombstone, table=True):
    __tablename__ = "invoices"
    __table_args__ = (
        Index("ix_invoices_created_id", "created", "id"),
        Index("ix_invoices_customer_created_id", "customer", "created", "id"),
        Index("ix_invoices_status_created_id", "status", "created", "id"),
        Index("ix_invoices_subscription_created_id", "subscription", "created", "id"),
    )

    id: str = Field(primary_key=True)
    customer: str | None = None  # indexed with created below
    customer_account: str | None = None
    customer_email: str | None = None
    customer_name: str | None = None
    status: str | None = None
    status_transitions: dict[str, Any] | None = _json("status_transitions")
    finalized_at: int | None = _ts()
    paid_at: int | None = _ts()
    marked_uncollectible_at: int | None = _ts()
    voided_at: int | None = _ts()
    amount_due: int | None = Field(default=None, sa_type=BigInteger)
    amount_paid: int | None = Field(default=None, sa_type=BigInteger)
    amount_paid_off_stripe: int | None = Field(default=None, sa_type=BigInteger)
    amount_remaining: int | None = Field(default=None, sa_type=BigInteger)
    amount_overpaid: int | None = Field(default=None, sa_type=BigInteger)
    amount_shipping: int | None = Field(default=None, sa_type=BigInteger)
    subtotal: int | None = Field(default=None, sa_type=BigInteger)
    subtotal_excluding_tax: int | None = Field(default=None, sa_type=BigInteger)
    total: int | None = Field(default=None, sa_type=BigInteger)
    total_excluding_tax: int | None = Field(default=None, sa_type=BigInteger)
    starting_balance: int | None = Field(default=None, sa_type=BigInteger)
    ending_balance: int | None = Field(default=None, sa_type=BigInteger)
    currency: str | None = None
    period_start: int | None = _ts()
    period_end: int | None = _ts()
    parent_type: str | None = None
    subscription: str | None = None
    quote: str | None = None
    # How it was paid: top-level before 2025-03-31.basil, the default payment's after (when embedded).
    charge: str | None = None
    payment_intent: str | None = None
    number: str | None = None
    billing_reason: str | None = None
    collection_method: str | None = None
    due_date: int | None = _ts()
    livemode: bool | None = None
    metadata_: dict[str, Any] | None = _json("metadata")
    created: int | None = _ts()
    test_clock: str | None = None
    # The winning snapshot's lines.has_more: only the first page of lines is known until a backfill.
    lines_incomplete: bool | None = None
    payload: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class InvoiceLineItem(MirrorVersion, table=True):
    """A line of an invoice, versioned by the invoice snapshot that last listed it."""

    __tablename__ = "invoice_line_items"
    __table_args__ = (Index("ix_invoice_line_items_invoice_position_id", "invoice", "position", "id"),)

    id: str = Field(primary_key=True)
    invoice: str  # indexed with position below
    # Index in the invoice's own line order (the order of lines.data and of GET /v1/invoices/{id}/lines).
    position: int = Field(sa_type=BigInteger)
    amount: int | None = Field(default=None, sa_type=BigInteger)
    currency: str | None = None
    description: str | None = Field(default=None, sa_type=Text)
    discount_amounts: list[Any] | None = _json("discount_amounts")
    discountable: bool | None = None
    discounts: list[Any] | None = _json("discounts")
    livemode: bool | None = None
    metadata_: dict[str, Any] | None = _json("metadata")
    parent_type: str | None = None
    invoice_item: str | None = Field(default=None, index=True)
    subscription_item: str | None = Field(default=None, index=True)
    subscription: str | None = Field(default=None, index=True)
    proration: bool | None = None
    proration_details: dict[str, Any] | None = _json("proration_details")
    period_start: int | None = _ts()
    period_end: int | None = _ts()
    pretax_credit_amounts: list[Any] | None = _json("pretax_credit_amounts")
    pricing_type: str | None = None
    price: str | None = None
    product: str | None = None
    unit_amount_decimal: str | None = None
    quantity: int | None = Field(default=None, sa_type=BigInteger)
    quantity_decimal: str | None = None
    subtotal: int | None = Field(default=None, sa_type=BigInteger)
    taxes: list[Any] | None = _json("taxes")
    payload: str = Field(sa_column=Column(Text, nullable=False))


class InvoiceLineSet(MirrorVersion, table=True):
    """Per invoice, the version of the newest snapshot (or backfill) that listed every line
    (``lines.has_more`` false). Lines written by an older version are no longer on the invoice."""

    __tablename__ = "invoice_line_sets"

    invoice: str = Field(primary_key=True)


class InvoiceItemInvoice(MirrorVersion, table=True):
    """Whether an invoice item is on an invoice, per (item, invoice), as the newest evidence says:
    the item's own snapshot (its ``invoice``) or a snapshot of the invoice whose lines name it (Stripe
    sends no event when a pending item is pulled onto an invoice, nor when it is taken off a draft).
    ``present`` turns false when a newer complete line list of the invoice no longer names the item;
    versioned like the snapshot that said so, so it converges whatever the order of events."""

    __tablename__ = "invoice_item_invoices"
    __table_args__ = (
        # Items taken off an invoice are few: the pending list finds them here directly.
        _partial("ix_invoice_item_invoices_absent", "invoice_item", where="NOT present"),
    )

    invoice_item: str = Field(primary_key=True)
    invoice: str = Field(primary_key=True, index=True)
    present: bool = True


# The version columns of MirrorVersion, in comparison order.
VERSION_NAMES = ("version_precedence", "last_event_created", "version_tiebreak", "last_event_id")


def _newer_or_same(left: Any, right: Any) -> Any:
    return tuple_(*(left.c[name] for name in VERSION_NAMES)) >= tuple_(
        *(right.c[name] for name in VERSION_NAMES)
    )


def item_invoice() -> Any:
    """The invoice an item is on now, as Stripe would say: of the invoices it was seen on (its own
    snapshot, or a line of the invoice), the one seen last, unless the item's own snapshot is newer
    (then what it says, null included), or a newer complete line list took it off."""
    links, items = InvoiceItemInvoice.__table__, InvoiceItem.__table__  # type: ignore[attr-defined]
    return (
        select(links.c.invoice)
        .where(links.c.invoice_item == items.c.id, links.c.present, _newer_or_same(links, items))
        .order_by(*(links.c[name].desc() for name in VERSION_NAMES))
        .limit(1)
        .scalar_subquery()
    )


def item_pending() -> Any:
    """Stripe's ``pending`` filter for invoice items: on no invoice now."""
    return item_invoice().is_(None)


class BillingMeter(MirrorVersion, table=True):
    __tablename__ = "billing_meters"
    __table_args__ = (
        Index("ix_billing_meters_created_id", "created", "id"),
        Index("ix_billing_meters_status_created_id", "status", "created", "id"),
    )

    id: str = Field(primary_key=True)
    status: str | None = None
    display_name: str | None = None
    event_name: str | None = Field(default=None, index=True)
    event_time_window: str | None = None
    aggregation_formula: str | None = None
    customer_mapping: dict[str, Any] | None = _json("customer_mapping")
    value_settings: dict[str, Any] | None = _json("value_settings")
    status_transitions: dict[str, Any] | None = _json("status_transitions")
    deactivated_at: int | None = _ts()
    livemode: bool | None = None
    created: int | None = _ts()
    updated: int | None = _ts()
    payload: str = Field(sa_column=Column(Text, nullable=False))


class BillingAlert(MirrorVersion, table=True):
    """Alerts have no creation time: lists are ordered by id, so each filter's index ends with id."""

    __tablename__ = "billing_alerts"
    __table_args__ = (
        Index("ix_billing_alerts_alert_type_id", "alert_type", "id"),
        Index("ix_billing_alerts_status_id", "status", "id"),
        Index("ix_billing_alerts_meter_id", "meter", "id"),
        Index("ix_billing_alerts_customer_id", "customer", "id"),
    )

    id: str = Field(primary_key=True)
    alert_type: str | None = None
    status: str | None = None
    title: str | None = None
    livemode: bool | None = None
    meter: str | None = None
    gte: int | None = Field(default=None, sa_type=BigInteger)
    recurrence: str | None = None
    # The customer of a single-customer filter (usage_threshold.filters), for the `customer` list filter.
    customer: str | None = None
    filters: list[Any] | None = _json("filters")
    payload: str = Field(sa_column=Column(Text, nullable=False))


class BillingAlertTrigger(MirrorVersion, table=True):
    """Append-only log of billing.alert.triggered, one row per event (a redelivery never adds one)."""

    __tablename__ = "billing_alert_triggers"
    __table_args__ = (Index("ix_billing_alert_triggers_alert_created", "alert", "created"),)

    event_id: str = Field(primary_key=True)
    alert: str  # indexed with created below
    customer: str | None = Field(default=None, index=True)
    # The SDK types the value as a number, so keep fractions.
    value: float | None = None
    created: int | None = _ts(index=True)
    livemode: bool | None = None
    payload: str = Field(sa_column=Column(Text, nullable=False))


class InvoiceRenderingTemplate(MirrorVersion, table=True):
    """No events exist for templates: filled by `billing-mirror backfill templates`."""

    __tablename__ = "invoice_rendering_templates"
    __table_args__ = (
        Index("ix_invoice_rendering_templates_created_id", "created", "id"),
        Index("ix_invoice_rendering_templates_status_created_id", "status", "created", "id"),
    )

    id: str = Field(primary_key=True)
    nickname: str | None = None
    status: str | None = None
    version: int | None = Field(default=None, sa_type=BigInteger)
    livemode: bool | None = None
    metadata_: dict[str, Any] | None = _json("metadata")
    created: int | None = _ts()
    payload: str = Field(sa_column=Column(Text, nullable=False))


class BillingMeterErrorReport(MirrorVersion, table=True):
    """Thin v1.billing.meter.error_report_triggered / no_meter_found notifications, one row per event."""

    __tablename__ = "billing_meter_error_reports"

    event_id: str = Field(primary_key=True)
    type: str = Field(index=True)
    meter: str | None = Field(default=None, index=True)
    created: int = Field(sa_type=BigInteger, index=True)
    livemode: bool | None = None
    context: str | None = None
    reason: dict[str, Any] | None = _json("reason")
    # From the event's `data` block when the body carries it (it does once fetched from /v2/core/events).
    developer_message_summary: str | None = Field(default=None, sa_type=Text)
    validation_start: str | None = None
    validation_end: str | None = None
    error_count: int | None = Field(default=None, sa_type=BigInteger)
    error_types: list[Any] | None = _json("error_types")
    payload: str = Field(sa_column=Column(Text, nullable=False))


class SyncWindow(SQLModel, table=True):
    """Checkpoints of a backfill (``billing-mirror sync``): one slice of a Stripe list, fetched on its
    own. A window is paged with ``starting_after`` inside its own ``created`` filter only; ``cursor`` is
    the last object of the last page applied, so a sync started again continues from there."""

    __tablename__ = "sync_windows"

    account: str = Field(primary_key=True)  # the Connect account (Stripe-Account), or ""
    resource: str = Field(primary_key=True)  # invoices, invoiceitems, invoice_payments, meters, ...
    span: str = Field(primary_key=True)  # "gte..lt" of its created filter, either side empty if none
    created_gte: int | None = _ts()
    created_lt: int | None = _ts()
    cursor: str | None = None
    done: bool = False
    objects: int = Field(default=0, sa_type=BigInteger)
    pages: int = Field(default=0, sa_type=BigInteger)
    updated_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )


class SyncState(SQLModel, table=True):
    """Per account and resource, where sync stands: the backfill under way or finished, and for
    ``events`` the catch-up watermark. Times are Stripe's clock (unix seconds)."""

    __tablename__ = "sync_state"

    account: str = Field(primary_key=True)  # "" for the account of the key
    resource: str = Field(primary_key=True)  # a backfilled resource, or "events"
    started_at: int | None = _ts()  # when the backfill under way (or the last one) started
    finished_at: int | None = _ts()  # when the last backfill finished; null while one is under way
    objects: int = Field(default=0, sa_type=BigInteger)  # objects the last backfill read
    # events: every event created before this time has been read from the Events API.
    watermark: int | None = _ts()
    updated_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
