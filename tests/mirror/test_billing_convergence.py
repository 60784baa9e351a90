"""Property: invoice, line, item, meter, alert and thin events in any order, split into any batches, with
duplicates, give one identical mirror (on SQLite and PostgreSQL)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from sqlalchemy import Engine

from tests.billing import INVOICE_A, INVOICE_G, T0, recorded, snapshot_of
from tests.events import load_fixture, make_event
from tests.mirror_rows import deliveries, replay_in_batches

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


def _meter(name: str, updated: int) -> dict[str, Any]:
    return snapshot_of(name) | {"updated": updated}


def event_pool() -> list[dict[str, Any]]:
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


POOL = event_pool()


def replay(engine: Engine, order: list[int], batch_sizes: list[int]) -> dict[str, Any]:
    return replay_in_batches(engine, POOL, order, batch_sizes, BILLING_TABLES)


def test_expected_final_state(engine: Engine) -> None:
    state = replay(engine, list(range(len(POOL))), [1] * len(POOL))
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
    links = {row["invoice_item"]: row["invoice"] for row in state["invoice_item_invoices"]}
    assert links["ii_1SyA02B7WZ01zgkWovrg0001"] == INVOICE_A
    [meter] = state["billing_meters"]
    assert (meter["status"], meter["last_event_id"]) == ("active", "evt_m_a")
    assert len(state["billing_alert_triggers"]) == 2 and len(state["billing_meter_error_reports"]) == 2
    assert state["billing_alerts"][0]["last_event_id"] == "evt_1SyG12B7WZ01zgkWalrttr02"


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(delivery=deliveries(len(POOL)))
def test_any_order_with_duplicates_gives_the_same_mirror(
    engine: Engine, delivery: tuple[list[int], list[int]]
) -> None:
    expected = replay(engine, list(range(len(POOL))), [1] * len(POOL))
    order, batch_sizes = delivery
    assert replay(engine, order, batch_sizes) == expected
