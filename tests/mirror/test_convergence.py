"""Property: the same events in any order, split into any batches, with duplicates, give one mirror."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, given, settings
from sqlalchemy import Engine

from tests.events import load_fixture, make_event
from tests.mirror_rows import deliveries, replay_in_batches

T = 1_767_225_600


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


def event_pool() -> list[dict[str, Any]]:
    """Events about a few objects, with same-second ties, stale snapshots and tombstones."""
    stub = {"object": "invoiceitem", "deleted": True}
    return [
        make_event("invoice_payment.paid", _payment("inpay_a", "open"), created=T, event_id="evt_a1"),
        make_event(
            "invoice_payment.paid",
            _payment("inpay_a", "paid", T + 5, amount_paid=100),
            created=T + 5,
            event_id="evt_a2",
        ),
        make_event(
            "invoice_payment.paid",
            _payment("inpay_a", "paid", None, amount_paid=90),
            created=T + 5,
            event_id="evt_a3",
        ),
        make_event(
            "invoice.updated",
            {"id": "in_1", "payments": {"data": [_payment("inpay_a", "open")]}},
            created=T + 9,
            event_id="evt_a4",
        ),
        make_event("invoice_payment.paid", _payment("inpay_b", "open"), created=T, event_id="evt_b1"),
        make_event(
            "invoice_payment.paid",
            _payment("inpay_b", "canceled", canceled_at=T),
            created=T,
            event_id="evt_b2",
        ),
        make_event(
            "invoice_payment.paid", _payment("inpay_b", "paid", paid_at=T), created=T, event_id="evt_b3"
        ),
        make_event("invoiceitem.created", _item("ii_a", 100), created=T, event_id="evt_i1"),
        make_event("invoiceitem.deleted", {"id": "ii_a", **stub}, created=T + 3, event_id="evt_i2"),
        make_event("invoiceitem.deleted", {"id": "ii_a", **stub}, created=T + 3, event_id="evt_i3"),
        make_event("invoiceitem.created", _item("ii_b", 200), created=T, event_id="evt_j1"),
        make_event(
            "invoiceitem.deleted", _item("ii_b", 250) | {"deleted": True}, created=T + 1, event_id="evt_j2"
        ),
        make_event("invoiceitem.created", _item("ii_c", 300), created=T, event_id="evt_k1"),
        make_event("invoiceitem.created", _item("ii_c", 301), created=T, event_id="evt_k2"),
        make_event("plan.created", {"id": "plan_1"}, created=T, event_id="evt_p1"),
    ]


POOL = event_pool()
MIRROR = ("invoice_payments", "invoice_items")


def replay(engine: Engine, order: list[int], batch_sizes: list[int]) -> dict[str, Any]:
    return replay_in_batches(engine, POOL, order, batch_sizes, MIRROR)


def test_expected_final_state(engine: Engine) -> None:
    state = replay(engine, list(range(len(POOL))), [])
    payments = {row["id"]: row for row in state["invoice_payments"]}
    assert (payments["inpay_a"]["status"], payments["inpay_a"]["paid_at"]) == ("paid", T + 5)
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
@given(delivery=deliveries(len(POOL)))
def test_any_order_with_duplicates_gives_the_same_mirror(
    engine: Engine, delivery: tuple[list[int], list[int]]
) -> None:
    expected = replay(engine, list(range(len(POOL))), [])
    order, batch_sizes = delivery
    assert replay(engine, order, batch_sizes) == expected
