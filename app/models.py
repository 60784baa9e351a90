"""SQL tables of the mirror. Column names are a public interface (see README, "SQL schema").

Every mirrored row carries the version of the event that last wrote its data:
(version_precedence, last_event_created, version_tiebreak, last_event_id), compared as a tuple.
Precedence lets terminal states win over same-object snapshots that Stripe rendered earlier; the
tiebreak orders events from the same second. Tombstones are a separate, monotonic flag.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, DateTime, Index, Text, text
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


class MirrorVersion(SQLModel):
    last_event_id: str
    last_event_created: int = Field(sa_type=BigInteger)
    version_precedence: int = 0
    version_tiebreak: int = Field(default=0, sa_type=BigInteger)


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
