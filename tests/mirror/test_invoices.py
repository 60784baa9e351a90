"""Invoices, their lines and the invoice items those lines reference, on both databases."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import Engine
from starlette.testclient import TestClient

from app.mirror.envelope import parse_event
from app.mirror.outcome import Outcome
from app.testing.dump import rows
from tests.support import (
    EVENT_FIXTURES,
    INVOICE_A,
    INVOICE_G,
    METER,
    T0,
    deliver,
    encode,
    ingest_each,
    item_state,
    load_fixture,
    make_event,
    one,
    recorded,
    snapshot_of,
)

MIRRORED_TYPES = {
    "billing.alert.triggered",
    "billing.meter.created",
    "billing.meter.updated",
    "billing.meter.deactivated",
    "billing.meter.reactivated",
    "v1.billing.meter.error_report_triggered",
    "v1.billing.meter.no_meter_found",
}


def line_ids(engine: Engine, invoice_id: str) -> list[str]:
    found = rows(engine, "invoice_line_items", invoice=invoice_id)
    return [row["id"] for row in sorted(found, key=lambda row: row["position"])]


def test_every_recorded_event_type_is_verified_and_applied(client: TestClient, engine: Engine) -> None:
    """One signed delivery per event type, through the real app, in the order Stripe created them;
    the mirror then reads back (each is applied, nothing is stale)."""
    events = [recorded(name) for name in EVENT_FIXTURES]
    events.sort(key=lambda event: (parse_event(encode(event)).created, event["id"]))
    types = set()
    for event in events:
        name = event["type"]
        types.add(event["type"])
        response = deliver(client, event)
        assert response.status_code == 200, (name, response.text)
        assert response.json()["outcome"] == "applied", name
    invoice_types = {t for t in types if t.startswith("invoice.")}
    assert len(invoice_types) == 16 and "invoice.upcoming" not in invoice_types
    assert types >= MIRRORED_TYPES

    invoices = {row["id"]: row for row in rows(engine, "invoices")}
    assert {row["status"] for row in invoices.values()} == {"paid", "void", "open", "draft"}
    a = invoices[INVOICE_A]
    assert (a["status"], a["paid_at"], a["last_event_id"]) == (
        "paid",
        T0 + 7300,
        "evt_1SyA23B7WZ01zgkWinvpd001",
    )
    assert line_ids(engine, INVOICE_A) == ["il_1SyA12B7WZ01zgkWiiA00001", "il_1SyA11B7WZ01zgkWsubA0001"]
    assert invoices["in_1SyB10B7WZ01zgkWmanlB001"]["status"] == "void"
    assert invoices["in_1SyD10B7WZ01zgkWovrpD001"]["amount_overpaid"] == 500
    assert invoices["in_1SyE10B7WZ01zgkWdraftE01"]["deleted"] is True
    assert invoices[INVOICE_G]["lines_incomplete"] is True and len(line_ids(engine, INVOICE_G)) == 10
    assert one(engine, "invoice_payments")["invoice"] == INVOICE_A
    meter = one(engine, "billing_meters")
    assert (meter["id"], meter["status"], meter["display_name"]) == (METER, "active", "API requests (v2)")
    assert one(engine, "billing_alerts")["meter"] == METER
    assert len(rows(engine, "billing_alert_triggers")) == 1
    assert len(rows(engine, "billing_meter_error_reports")) == 2


def test_invoice_columns(engine: Engine) -> None:
    event = recorded("invoice.finalized")
    assert ingest_each(engine, event) == [Outcome.APPLIED]
    row = one(engine, "invoices", id=INVOICE_A)
    obj = event["data"]["object"]
    assert (row["customer"], row["status"], row["currency"]) == ("cus_TkQ7cW3mJ9xN2a", "open", "usd")
    assert (
        row["subscription"] == "sub_1SyA00B7WZ01zgkWq8Lm3N4p" and row["parent_type"] == "subscription_details"
    )
    assert row["status_transitions"] == obj["status_transitions"] and row["finalized_at"] == T0 + 3600
    assert (row["paid_at"], row["voided_at"], row["marked_uncollectible_at"]) == (None, None, None)
    assert (row["amount_due"], row["amount_paid"], row["amount_remaining"], row["total"]) == (
        4150,
        0,
        4150,
        4150,
    )
    assert (row["period_start"], row["period_end"], row["created"]) == (T0 - 2592000, T0, T0)
    assert (row["number"], row["billing_reason"], row["collection_method"]) == (
        "QXG1O8VC-0007",
        "subscription_cycle",
        "charge_automatically",
    )
    assert row["livemode"] is False and row["metadata"] == {} and row["lines_incomplete"] is False
    assert json.loads(row["payload"]) == obj
    assert (row["last_event_id"], row["last_event_created"], row["deleted"]) == (
        event["id"],
        event["created"],
        False,
    )


def test_line_columns_keep_every_field_and_the_invoice_order(engine: Engine) -> None:
    event = recorded("invoice.created")
    ingest_each(engine, event)
    lines = event["data"]["object"]["lines"]["data"]
    assert line_ids(engine, INVOICE_A) == [line["id"] for line in lines]
    proration = one(engine, "invoice_line_items", id="il_1SyA13B7WZ01zgkWiiA00002")
    assert (proration["invoice"], proration["position"], proration["amount"], proration["subtotal"]) == (
        INVOICE_A,
        0,
        800,
        800,
    )
    assert (proration["parent_type"], proration["invoice_item"], proration["subscription"]) == (
        "invoice_item_details",
        "ii_1SyA03B7WZ01zgkWseat0002",
        "sub_1SyA00B7WZ01zgkWq8Lm3N4p",
    )
    assert proration["proration"] is True and proration["discountable"] is False
    assert (proration["price"], proration["product"], proration["quantity"]) == (
        "price_1SyA0cB7WZ01zgkWseats0",
        "prod_TkSeats000001",
        2,
    )
    assert proration["taxes"] == [] and proration["discount_amounts"] == [] and proration["metadata"] == {}
    assert json.loads(proration["payload"]) == lines[0]
    subscription_line = one(engine, "invoice_line_items", id="il_1SyA11B7WZ01zgkWsubA0001")
    assert (subscription_line["parent_type"], subscription_line["subscription_item"]) == (
        "subscription_item_details",
        "si_TkPro0Item00001",
    )
    assert subscription_line["invoice_item"] is None
    assert one(engine, "invoice_line_items", id="il_1SyA11B7WZ01zgkWsubA0001")["last_event_id"] == event["id"]


@pytest.mark.parametrize("newer_first", [False, True])
def test_lines_missing_from_a_newer_draft_snapshot_are_removed(engine: Engine, newer_first: bool) -> None:
    created, updated = recorded("invoice.created"), recorded("invoice.updated")
    order = (updated, created) if newer_first else (created, updated)
    ingest_each(engine, *order)
    # The prorated seats line was dropped by the newer snapshot; an older one never brings it back.
    assert line_ids(engine, INVOICE_A) == ["il_1SyA12B7WZ01zgkWiiA00001", "il_1SyA11B7WZ01zgkWsubA0001"]
    assert {row["last_event_id"] for row in rows(engine, "invoice_line_items")} == {updated["id"]}
    assert one(engine, "invoices")["amount_due"] == 4150


def test_an_older_snapshot_never_removes_lines_of_a_newer_one(engine: Engine) -> None:
    older = snapshot_of("invoice.created")
    older["lines"]["data"] = older["lines"]["data"][2:]  # only the subscription line
    newer = snapshot_of("invoice.created")
    ingest_each(engine, make_event("invoice.updated", newer, created=T0 + 50, event_id="evt_newer"))
    assert ingest_each(
        engine, make_event("invoice.updated", older, created=T0 + 10, event_id="evt_older")
    ) == [Outcome.STALE]
    assert len(line_ids(engine, INVOICE_A)) == 3


def test_has_more_marks_lines_incomplete_and_removes_nothing(engine: Engine) -> None:
    complete = snapshot_of("invoice.created.has_more")
    complete["lines"].update(has_more=False)
    ingest_each(engine, make_event("invoice.created", complete, created=T0 + 3001, event_id="evt_g_complete"))
    partial = snapshot_of("invoice.created.has_more")
    partial["lines"]["data"] = partial["lines"]["data"][:4]
    ingest_each(engine, make_event("invoice.updated", partial, created=T0 + 3100, event_id="evt_g_partial"))
    invoice = one(engine, "invoices", id=INVOICE_G)
    assert invoice["lines_incomplete"] is True
    assert len(line_ids(engine, INVOICE_G)) == 10  # the page beyond the first 4 is not known to be gone
    # A newer complete list then removes what it does not name.
    final = snapshot_of("invoice.created.has_more")
    final["lines"].update(data=final["lines"]["data"][:3], has_more=False)
    ingest_each(engine, make_event("invoice.updated", final, created=T0 + 3200, event_id="evt_g_final"))
    assert len(line_ids(engine, INVOICE_G)) == 3
    assert one(engine, "invoices", id=INVOICE_G)["lines_incomplete"] is False


@pytest.mark.parametrize("reverse", [False, True])
def test_status_never_moves_backward_on_a_same_second_tie(engine: Engine, reverse: bool) -> None:
    finalized = snapshot_of("invoice.finalized")
    paid = snapshot_of("invoice.paid")
    draft = snapshot_of("invoice.created")  # three lines; the paid invoice has two
    same = T0 + 7300
    events = [
        make_event("invoice.paid", paid, created=same, event_id="evt_a"),
        make_event("invoice.finalized", finalized, created=same, event_id="evt_z"),
        make_event("invoice.updated", draft, created=same, event_id="evt_zz"),
    ]
    ingest_each(engine, *(events[::-1] if reverse else events))
    row = one(engine, "invoices")
    assert (row["status"], row["paid_at"], row["last_event_id"]) == ("paid", same, "evt_a")
    # The lines are those of the winning snapshot: the draft's extra line is gone in either order.
    assert len(line_ids(engine, INVOICE_A)) == 2


def test_a_paid_invoice_is_never_reopened_by_a_later_open_snapshot(engine: Engine) -> None:
    paid = recorded("invoice.paid")
    later_open = make_event("invoice.updated", snapshot_of("invoice.sent"), created=paid["created"] + 600)
    ingest_each(engine, paid, later_open)
    assert one(engine, "invoices")["status"] == "paid"


def test_set_transition_stamps_never_return_to_null_on_a_tie(engine: Engine) -> None:
    with_stamp = snapshot_of("invoice.marked_uncollectible")
    without = snapshot_of("invoice.marked_uncollectible")
    without["status_transitions"]["marked_uncollectible_at"] = None
    ingest_each(
        engine,
        make_event("invoice.updated", with_stamp, created=T0, event_id="evt_a"),
        make_event("invoice.updated", without, created=T0, event_id="evt_z"),
    )
    assert one(engine, "invoices")["marked_uncollectible_at"] is not None


def test_deleted_invoice_is_a_tombstone_never_resurrected(engine: Engine) -> None:
    deleted = recorded("invoice.deleted")
    invoice_id = deleted["data"]["object"]["id"]
    created = make_event("invoice.created", deleted["data"]["object"], created=deleted["created"] - 600)
    later = make_event("invoice.updated", deleted["data"]["object"], created=deleted["created"] + 600)
    ingest_each(engine, deleted, created, later)
    row = one(engine, "invoices", id=invoice_id)
    assert row["deleted"] is True and row["deleted_by_event_id"] == deleted["id"]
    assert row["status"] == "draft" and row["last_event_id"] == later["id"]


def test_stub_deletion_keeps_the_last_snapshot(engine: Engine) -> None:
    stub_obj = {"deleted": True, "id": "in_1SyE10B7WZ01zgkWdraftE01", "object": "invoice"}
    deletion = make_event("invoice.deleted", stub_obj, created=T0 + 9999)
    created = make_event("invoice.created", snapshot_of("invoice.deleted"), created=T0 + 1800)
    assert ingest_each(engine, deletion) == [Outcome.APPLIED]
    assert one(engine, "invoices")["status"] is None
    ingest_each(engine, created)
    row = one(engine, "invoices")
    assert (row["deleted"], row["status"], row["deleted_by_event_id"]) == (True, "draft", deletion["id"])
    assert len(rows(engine, "invoice_line_items")) == 1


def test_invoice_without_id_is_ignored(engine: Engine) -> None:
    upcoming = snapshot_of("invoice.created")
    del upcoming["id"]
    assert ingest_each(
        engine, make_event("invoice.upcoming", upcoming), make_event("invoice.updated", upcoming)
    ) == [Outcome.IGNORED, Outcome.IGNORED]
    assert rows(engine, "invoices") == [] and rows(engine, "invoice_line_items") == []


def test_duplicate_delivery_is_applied_once(client: TestClient, engine: Engine) -> None:
    event = recorded("invoice.created")
    first, second = deliver(client, event), deliver(client, event)
    assert first.json()["duplicate"] is False and second.json()["duplicate"] is True
    assert len(rows(engine, "invoice_line_items")) == 3
    assert one(engine, "stripe_events")["attempts"] == 1


def pending_item(item_id: str) -> dict[str, Any]:
    obj = load_fixture("invoiceitem.created.json")["data"]["object"]
    return {**obj, "id": item_id, "invoice": None}


@pytest.mark.parametrize("item_first", [True, False])
def test_items_learn_their_invoice_from_lines(engine: Engine, item_first: bool) -> None:
    item_id = "ii_1SyA02B7WZ01zgkWovrg0001"
    item_created = make_event("invoiceitem.created", pending_item(item_id), created=T0 - 3600)
    invoice = recorded("invoice.created")
    ingest_each(engine, *((item_created, invoice) if item_first else (invoice, item_created)))
    assert item_state(engine, item_id) == (INVOICE_A, False)
    assert one(engine, "invoice_items", id=item_id)["invoice"] is None  # the item's own snapshot is kept
    assert one(engine, "invoice_item_invoices", invoice_item=item_id)["invoice"] == INVOICE_A


def test_an_item_on_no_invoice_is_pending(engine: Engine) -> None:
    ingest_each(engine, make_event("invoiceitem.created", pending_item("ii_alone")))
    assert item_state(engine, "ii_alone") == (None, True)


def test_subscription_item_line_with_an_invoice_item_links_it(engine: Engine) -> None:
    invoice = snapshot_of("invoice.created")
    line = invoice["lines"]["data"][2]
    line["parent"]["subscription_item_details"]["invoice_item"] = "ii_from_subscription"
    ingest_each(engine, make_event("invoiceitem.created", pending_item("ii_from_subscription")))
    ingest_each(engine, make_event("invoice.created", invoice))
    assert item_state(engine, "ii_from_subscription") == (INVOICE_A, False)
