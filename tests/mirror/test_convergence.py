"""Property: the same events in any order, split into any batches, with duplicates, give one identical
mirror (on SQLite and PostgreSQL): invoice payments and items, and invoice, line, item, meter, alert and
thin events."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, given, settings
from sqlalchemy import Engine

from tests.support import (
    INVOICE_A,
    INVOICE_G,
    T0,
    deliveries,
    load_fixture,
    make_event,
    recorded,
    replay_in_batches,
    snapshot_of,
)

# ---- invoice payments and invoice items ------------------------------------------------------


def _payment(
    pid: str,
    status: str,
    paid_at: int | None = None,
    canceled_at: int | None = None,
    amount_paid: int | None = None,
) -> dict[str, Any]:
    obj = copy.deepcopy(load_fixture("invoice_payment.paid.json")["data"]["object"])
    obj.update(
        id=pid,
        status=status,
        amount_paid=amount_paid,
        status_transitions={"paid_at": paid_at, "canceled_at": canceled_at},
    )
    return obj


def _item(iid: str, amount: int) -> dict[str, Any]:
    obj = copy.deepcopy(load_fixture("invoiceitem.created.json")["data"]["object"])
    obj.update(id=iid, amount=amount)
    return obj


def payments_and_items_pool() -> list[dict[str, Any]]:
    """Events about a few objects, with same-second ties, stale snapshots and tombstones."""
    stub = {"object": "invoiceitem", "deleted": True}
    return [
        make_event("invoice_payment.paid", _payment("inpay_a", "open"), created=T0, event_id="evt_a1"),
        make_event(
            "invoice_payment.paid",
            _payment("inpay_a", "paid", T0 + 5, amount_paid=100),
            created=T0 + 5,
            event_id="evt_a2",
        ),
        make_event(
            "invoice_payment.paid",
            _payment("inpay_a", "paid", None, amount_paid=90),
            created=T0 + 5,
            event_id="evt_a3",
        ),
        make_event(
            "invoice.updated",
            {"id": "in_1", "payments": {"data": [_payment("inpay_a", "open")]}},
            created=T0 + 9,
            event_id="evt_a4",
        ),
        make_event("invoice_payment.paid", _payment("inpay_b", "open"), created=T0, event_id="evt_b1"),
        make_event(
            "invoice_payment.paid",
            _payment("inpay_b", "canceled", canceled_at=T0),
            created=T0,
            event_id="evt_b2",
        ),
        make_event(
            "invoice_payment.paid", _payment("inpay_b", "paid", paid_at=T0), created=T0, event_id="evt_b3"
        ),
        make_event("invoiceitem.created", _item("ii_a", 100), created=T0, event_id="evt_i1"),
        make_event("invoiceitem.deleted", {"id": "ii_a", **stub}, created=T0 + 3, event_id="evt_i2"),
        make_event("invoiceitem.deleted", {"id": "ii_a", **stub}, created=T0 + 3, event_id="evt_i3"),
        make_event("invoiceitem.created", _item("ii_b", 200), created=T0, event_id="evt_j1"),
        make_event(
            "invoiceitem.deleted", _item("ii_b", 250) | {"deleted": True}, created=T0 + 1, event_id="evt_j2"
        ),
        make_event("invoiceitem.created", _item("ii_c", 300), created=T0, event_id="evt_k1"),
        make_event("invoiceitem.created", _item("ii_c", 301), created=T0, event_id="evt_k2"),
        make_event("plan.created", {"id": "plan_1"}, created=T0, event_id="evt_p1"),
    ]


PAYMENTS_AND_ITEMS_POOL = payments_and_items_pool()
PAYMENTS_AND_ITEMS_TABLES = ("invoice_payments", "invoice_items")


def replay_payments_and_items(engine: Engine, order: list[int], batch_sizes: list[int]) -> dict[str, Any]:
    return replay_in_batches(engine, PAYMENTS_AND_ITEMS_POOL, order, batch_sizes, PAYMENTS_AND_ITEMS_TABLES)


def test_expected_final_state_of_payments_and_items(engine: Engine) -> None:
    state = replay_payments_and_items(engine, list(range(len(PAYMENTS_AND_ITEMS_POOL))), [])
    payments = {row["id"]: row for row in state["invoice_payments"]}
    assert (payments["inpay_a"]["status"], payments["inpay_a"]["paid_at"]) == ("paid", T0 + 5)
    assert payments["inpay_a"]["last_event_id"] == "evt_a2"
    # b: canceled and paid tie in the same second with one stamp each: the event id decides.
    assert (
        payments["inpay_b"]["status"] in ("paid", "canceled")
        and payments["inpay_b"]["last_event_id"] == "evt_b3"
    )
    items = {row["id"]: row for row in state["invoice_items"]}
    assert items["ii_a"]["deleted"] and items["ii_a"]["amount"] == 100
    assert items["ii_a"]["deleted_by_event_id"] == "evt_i2"
    assert items["ii_b"]["deleted"] and items["ii_b"]["amount"] == 250
    assert not items["ii_c"]["deleted"] and items["ii_c"]["amount"] == 301


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(delivery=deliveries(len(PAYMENTS_AND_ITEMS_POOL)))
def test_payments_and_items_in_any_order_with_duplicates_give_the_same_mirror(
    engine: Engine, delivery: tuple[list[int], list[int]]
) -> None:
    expected = replay_payments_and_items(engine, list(range(len(PAYMENTS_AND_ITEMS_POOL))), [])
    order, batch_sizes = delivery
    assert replay_payments_and_items(engine, order, batch_sizes) == expected


# ---- invoices, lines, items, meters, alerts, thin events -------------------------------------

BILLING_TABLES = (
    "invoices",
    "invoice_line_items",
    "invoice_line_sets",
    "invoice_item_invoices",
    "invoice_items",
    "invoice_payments",
    "billing_meters",
    "billing_alerts",
    "billing_alert_triggers",
    "billing_meter_error_reports",
)


def _g(count: int, *, has_more: bool) -> dict[str, Any]:
    obj = snapshot_of("invoice.created.has_more")
    obj["lines"].update(data=obj["lines"]["data"][:count], has_more=has_more)
    return obj


def _other(*, with_item: bool) -> dict[str, Any]:
    """A second draft whose line names the item of invoice A's first line (or no longer does)."""
    obj = snapshot_of("invoice.created") | {"id": "in_other_draft", "status": "draft"}
    lines = [dict(line, id=line["id"] + "_o") for line in obj["lines"]["data"]]
    obj["lines"] = dict(obj["lines"], data=lines if with_item else lines[1:], has_more=False)
    return obj


def _meter(name: str, updated: int) -> dict[str, Any]:
    return snapshot_of(name) | {"updated": updated}


def billing_pool() -> list[dict[str, Any]]:
    item = load_fixture("invoiceitem.created.json")["data"]["object"]
    stub = {"id": "in_1SyE10B7WZ01zgkWdraftE01", "object": "invoice", "deleted": True}
    deleted = recorded("invoice.deleted")
    trigger = recorded("billing.alert.triggered")
    later_trigger = make_event(
        "billing.alert.triggered",
        trigger["data"]["object"] | {"value": 100900, "created": T0 + 46800},
        created=T0 + 46801,
        event_id="evt_1SyG12B7WZ01zgkWalrttr02",
    )
    return [
        # Invoice A: draft with three lines, draft with two, open, paid twice in the same second.
        recorded("invoice.created"),
        recorded("invoice.updated"),
        recorded("invoice.finalized"),
        recorded("invoice.payment_succeeded"),
        recorded("invoice.paid"),
        make_event(
            "invoice.updated", snapshot_of("invoice.created"), created=T0 + 7300, event_id="evt_tie_draft"
        ),
        # The invoice items behind A's lines: one pending item, one deleted while on the draft.
        make_event("invoiceitem.created", item | {"id": "ii_1SyA02B7WZ01zgkWovrg0001"}, created=T0 - 60),
        make_event(
            "invoiceitem.deleted",
            {"id": "ii_1SyA03B7WZ01zgkWseat0002", "object": "invoiceitem", "deleted": True},
            created=T0 + 100,
        ),
        # Invoice O: the same pending item moved onto a second draft, then taken off it again.
        make_event("invoice.created", _other(with_item=True), created=T0 + 8000, event_id="evt_o1"),
        make_event("invoice.updated", _other(with_item=False), created=T0 + 8100, event_id="evt_o2"),
        # Invoice G: first page only, then a complete list of 7, then a newer first page of 3.
        make_event("invoice.created", _g(10, has_more=True), created=T0 + 3001, event_id="evt_g1"),
        make_event("invoice.updated", _g(7, has_more=False), created=T0 + 3100, event_id="evt_g2"),
        make_event("invoice.updated", _g(3, has_more=True), created=T0 + 3200, event_id="evt_g3"),
        make_event("invoice.updated", _g(12, has_more=False), created=T0 + 3050, event_id="evt_g0"),
        # Invoice E: created, deleted (full payload), and a stub deletion.
        make_event("invoice.created", deleted["data"]["object"], created=T0 + 1801),
        deleted,
        make_event("invoice.deleted", stub, created=T0 + 2500, event_id="evt_e_stub"),
        # Meter: the lifecycle plus a deactivate/reactivate pair within one second.
        recorded("billing.meter.created"),
        recorded("billing.meter.updated"),
        recorded("billing.meter.deactivated"),
        recorded("billing.meter.reactivated"),
        make_event(
            "billing.meter.deactivated",
            _meter("billing.meter.deactivated", T0 + 99000),
            created=T0 + 99001,
            event_id="evt_m_z",
        ),
        make_event(
            "billing.meter.reactivated",
            _meter("billing.meter.reactivated", T0 + 99001),
            created=T0 + 99001,
            event_id="evt_m_a",
        ),
        trigger,
        later_trigger,
        recorded("v1.billing.meter.error_report_triggered"),
        recorded("v1.billing.meter.no_meter_found"),
    ]


BILLING_POOL = billing_pool()


def replay_billing(engine: Engine, order: list[int], batch_sizes: list[int]) -> dict[str, Any]:
    return replay_in_batches(engine, BILLING_POOL, order, batch_sizes, BILLING_TABLES)


def test_expected_final_state_of_billing_resources(engine: Engine) -> None:
    state = replay_billing(engine, list(range(len(BILLING_POOL))), [1] * len(BILLING_POOL))
    invoices = {row["id"]: row for row in state["invoices"]}
    assert (invoices[INVOICE_A]["status"], invoices[INVOICE_A]["last_event_id"]) == (
        "paid",
        "evt_1SyA23B7WZ01zgkWinvpd001",
    )
    lines = state["invoice_line_items"]
    assert sorted(row["id"] for row in lines if row["invoice"] == INVOICE_A) == [
        "il_1SyA11B7WZ01zgkWsubA0001",
        "il_1SyA12B7WZ01zgkWiiA00001",
    ]
    # G: the newest complete list had 7 lines; the newer first page of 3 removes nothing.
    assert len([row for row in lines if row["invoice"] == INVOICE_G]) == 7
    assert invoices[INVOICE_G]["lines_incomplete"] is True
    deleted = invoices["in_1SyE10B7WZ01zgkWdraftE01"]
    assert deleted["deleted"] and deleted["status"] == "draft"
    links = {(row["invoice_item"], row["invoice"]): row["present"] for row in state["invoice_item_invoices"]}
    assert links[("ii_1SyA02B7WZ01zgkWovrg0001", INVOICE_A)] is True
    # Moved onto the other draft, then taken off it: still seen there, no longer on it.
    taken_off = [key for key, present in links.items() if key[1] == "in_other_draft" and not present]
    assert len(taken_off) == 1
    [meter] = state["billing_meters"]
    assert (meter["status"], meter["last_event_id"]) == ("active", "evt_m_a")
    assert len(state["billing_alert_triggers"]) == 2 and len(state["billing_meter_error_reports"]) == 2
    assert state["billing_alerts"][0]["last_event_id"] == "evt_1SyG12B7WZ01zgkWalrttr02"


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(delivery=deliveries(len(BILLING_POOL)))
def test_billing_resources_in_any_order_with_duplicates_give_the_same_mirror(
    engine: Engine, delivery: tuple[list[int], list[int]]
) -> None:
    expected = replay_billing(engine, list(range(len(BILLING_POOL))), [1] * len(BILLING_POOL))
    order, batch_sizes = delivery
    assert replay_billing(engine, order, batch_sizes) == expected
