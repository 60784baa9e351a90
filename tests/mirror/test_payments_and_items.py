"""What the handlers write for invoice payments and invoice items, and how ordering rules apply."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from sqlalchemy import Engine

from app.ingest.store import EventStore
from app.mirror.envelope import parse_event
from app.mirror.outcome import Outcome
from app.testing.dump import rows
from tests.support import encode, load_fixture, make_event, one

T = 1_767_225_600


def ingest(engine: Engine, *events: dict[str, Any]) -> list[Outcome]:
    results = EventStore(engine).ingest([parse_event(encode(e)) for e in events])
    outcomes = []
    for result in results:
        assert not isinstance(result, Exception), result
        outcomes.append(result.outcome)
    return outcomes


def payment(
    status: str = "open",
    *,
    paid_at: int | None = None,
    canceled_at: int | None = None,
    payment_id: str = "inpay_1",
    **fields: Any,
) -> dict[str, Any]:
    obj = copy.deepcopy(load_fixture("invoice_payment.paid.json")["data"]["object"])
    obj.update(
        id=payment_id, status=status, status_transitions={"paid_at": paid_at, "canceled_at": canceled_at}
    )
    obj.update(fields)
    return obj


def item(item_id: str = "ii_1", **fields: Any) -> dict[str, Any]:
    obj = copy.deepcopy(load_fixture("invoiceitem.created.json")["data"]["object"])
    obj.update(id=item_id, **fields)
    return obj


def test_payment_columns(engine: Engine) -> None:
    event = load_fixture("invoice_payment.paid.json")
    assert ingest(engine, event) == [Outcome.APPLIED]
    row = one(engine, "invoice_payments")
    obj = event["data"]["object"]
    assert row["id"] == obj["id"]
    assert row["invoice"] == "in_1SxQ2kB7WZ01zgkWu9fdqL6I"
    assert (row["payment_type"], row["payment_id"]) == ("payment_intent", "pi_3SxQ2mB7WZ01zgkW1a2b3c4d")
    assert (row["status"], row["paid_at"], row["canceled_at"]) == ("paid", 1767225540, None)
    assert (row["amount_paid"], row["amount_requested"], row["currency"]) == (2000, 2000, "usd")
    assert row["is_default"] is True and row["livemode"] is False and row["created"] == obj["created"]
    assert json.loads(row["payload"]) == obj
    assert (row["last_event_id"], row["last_event_created"]) == (event["id"], event["created"])


@pytest.mark.parametrize(
    ("payment_field", "value"),
    [
        ("charge", "ch_1"),
        ("payment_record", "pr_1"),
        ("payment_intent", {"id": "pi_exp", "object": "payment_intent"}),
    ],
)
def test_payment_reference_split(engine: Engine, payment_field: str, value: Any) -> None:
    obj = payment("paid", paid_at=T, payment={"type": payment_field, payment_field: value})
    ingest(engine, make_event("invoice_payment.paid", obj))
    row = one(engine, "invoice_payments")
    assert row["payment_type"] == payment_field
    assert row["payment_id"] == (value["id"] if isinstance(value, dict) else value)


def test_older_event_never_overwrites_newer(engine: Engine) -> None:
    newer = make_event(
        "invoice_payment.paid", payment("paid", paid_at=T + 10, amount_paid=2000), created=T + 10
    )
    older = make_event("invoice_payment.paid", payment("paid", paid_at=T + 10, amount_paid=1), created=T)
    assert ingest(engine, newer, older) == [Outcome.APPLIED, Outcome.STALE]
    row = one(engine, "invoice_payments")
    assert (row["amount_paid"], row["last_event_id"]) == (2000, newer["id"])
    assert one(engine, "stripe_events", id=older["id"])["outcome"] == "stale"


def test_embedded_payments_of_an_invoice_are_mirrored(engine: Engine) -> None:
    event = load_fixture("invoice.paid.json")
    assert ingest(engine, event) == [Outcome.APPLIED]
    row = one(engine, "invoice_payments")
    assert row["id"] == event["data"]["object"]["payments"]["data"][0]["id"]
    assert row["last_event_id"] == event["id"]


@pytest.mark.parametrize("terminal", ["paid", "canceled"])
def test_terminal_status_never_moves_back_to_open(engine: Engine, terminal: str) -> None:
    stamps = {"paid_at": T} if terminal == "paid" else {"canceled_at": T}
    done = make_event("invoice_payment.paid", payment(terminal, **stamps), created=T)
    # Even an open snapshot stamped later cannot reopen a terminal payment.
    reopened = make_event(
        "invoice.updated", {"id": "in_1", "payments": {"data": [payment("open")]}}, created=T + 5
    )
    for order in ((done, reopened), (reopened, done)):
        ingest(engine, *order)
        assert one(engine, "invoice_payments")["status"] == terminal


def test_same_second_ties_prefer_progress(engine: Engine) -> None:
    open_ = make_event("invoice_payment.paid", payment("open"), created=T, event_id="evt_zzzz")
    paid_without_stamp = make_event("invoice_payment.paid", payment("paid"), created=T, event_id="evt_yyyy")
    paid = make_event("invoice_payment.paid", payment("paid", paid_at=T), created=T, event_id="evt_aaaa")
    ingest(engine, paid, paid_without_stamp, open_)
    row = one(engine, "invoice_payments")
    assert (row["status"], row["paid_at"], row["last_event_id"]) == ("paid", T, "evt_aaaa")


def test_item_columns(engine: Engine) -> None:
    event = load_fixture("invoiceitem.created.json")
    ingest(engine, event)
    row = one(engine, "invoice_items")
    obj = event["data"]["object"]
    assert row["customer"] == obj["customer"] and row["date"] == obj["date"] and row["invoice"] is None
    assert (row["price"], row["product"]) == ("price_1SxQ1aB7WZ01zgkWsetup", "prod_TsetupFee01")
    assert (row["period_start"], row["period_end"]) == (obj["period"]["start"], obj["period"]["end"])
    assert row["metadata"] == {"order_id": "6735"}
    assert (row["quantity"], row["quantity_decimal"], row["unit_amount_decimal"]) == (1, "1", "1000")
    assert row["tax_rates"] == [] and row["discounts"] == [] and row["deleted"] is False
    assert json.loads(row["payload"]) == obj


def test_item_subscription_parent(engine: Engine) -> None:
    parent = {
        "type": "subscription_details",
        "subscription_details": {"subscription": "sub_1", "subscription_item": "si_1"},
    }
    ingest(engine, make_event("invoiceitem.created", item(parent=parent, test_clock="clock_1")))
    row = one(engine, "invoice_items")
    assert (row["parent_type"], row["subscription"], row["subscription_item"], row["test_clock"]) == (
        "subscription_details",
        "sub_1",
        "si_1",
        "clock_1",
    )


def test_stub_deletion_keeps_the_snapshot_and_is_never_resurrected(engine: Engine) -> None:
    created = load_fixture("invoiceitem.created.json")
    deleted = load_fixture("invoiceitem.deleted.json")
    assert ingest(engine, deleted) == [Outcome.APPLIED]
    tomb = one(engine, "invoice_items")
    assert tomb["deleted"] is True and tomb["amount"] is None
    assert ingest(engine, created) == [Outcome.APPLIED]  # fills in the data, stays deleted
    row = one(engine, "invoice_items")
    assert row["deleted"] is True and row["amount"] == 1000
    assert (row["deleted_by_event_id"], row["deleted_by_event_created"]) == (
        deleted["id"],
        deleted["created"],
    )
    again = make_event("invoiceitem.created", created["data"]["object"], created=deleted["created"] + 100)
    ingest(engine, again)
    assert one(engine, "invoice_items")["deleted"] is True


def test_full_object_deletion_writes_data_too(engine: Engine) -> None:
    ingest(engine, make_event("invoiceitem.created", item(amount=500), created=T))
    ingest(engine, make_event("invoiceitem.deleted", item(amount=700, deleted=True), created=T + 1))
    row = one(engine, "invoice_items")
    assert (row["deleted"], row["amount"]) == (True, 700)


def test_earliest_deleting_event_is_remembered(engine: Engine) -> None:
    stub = {"id": "ii_1", "object": "invoiceitem", "deleted": True}
    late = make_event("invoiceitem.deleted", stub, created=T + 50, event_id="evt_late")
    early = make_event("invoiceitem.deleted", stub, created=T + 10, event_id="evt_early")
    ingest(engine, late, early)
    assert one(engine, "invoice_items")["deleted_by_event_id"] == "evt_early"
    assert len(rows(engine, "stripe_events")) == 2
