"""Three real server processes on PostgreSQL, many concurrent deliveries about the same invoice."""

from __future__ import annotations

import asyncio
import copy
import json
import random
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine

from app.testing.dump import rows
from tests.support import (
    INVOICE_A,
    METER,
    POSTGRESQL,
    T0,
    LiveServer,
    blast,
    encode,
    make_event,
    one,
    recorded,
    snapshot_of,
)

pytestmark = pytest.mark.slow


def draft(step: int) -> dict[str, Any]:
    """A draft snapshot of invoice A with a line of its own and, every third step, only a first page."""
    obj = snapshot_of("invoice.created")
    extra = copy.deepcopy(obj["lines"]["data"][1])
    extra.update(id=f"il_conc_step_{step:02d}", amount=step)
    extra["parent"]["invoice_item_details"]["invoice_item"] = f"ii_conc_step_{step:02d}"
    obj["lines"]["data"].append(extra)
    obj["lines"]["has_more"] = step % 3 == 0
    obj["amount_due"] = step
    return obj


@pytest.mark.parametrize("db_url", [POSTGRESQL], indirect=True)
def test_concurrent_snapshots_of_one_invoice_converge_to_the_newest(
    live_server: Callable[..., LiveServer], engine: Engine
) -> None:
    server = live_server(workers=3)
    drafts = [
        make_event("invoice.updated", draft(step), created=T0 + step, event_id=f"evt_conc_draft_{step:02d}")
        for step in range(30)
    ]
    lifecycle = [
        recorded(name)
        for name in (
            "invoice.created",
            "invoice.updated",
            "invoice.finalized",
            "invoice.sent",
            "invoice.payment_failed",
            "invoice.payment_succeeded",
            "invoice.paid",
        )
    ]
    meters = [
        recorded(name)
        for name in (
            "billing.meter.created",
            "billing.meter.updated",
            "billing.meter.deactivated",
            "billing.meter.reactivated",
        )
    ]
    events = drafts + lifecycle + meters
    bodies = [encode(event) for event in events] * 3  # every event delivered three times
    random.Random(11).shuffle(bodies)
    statuses = asyncio.run(blast(server.url, bodies, concurrency=24))
    assert statuses.count(200) == len(statuses), {s: statuses.count(s) for s in set(statuses)}

    stored = rows(engine, "stripe_events")
    assert len(stored) == len(events)
    assert all(event["outcome"] in ("applied", "stale") for event in stored)
    newest = recorded("invoice.paid")
    invoice = one(engine, "invoices", id=INVOICE_A)
    assert (invoice["status"], invoice["last_event_id"]) == ("paid", newest["id"])
    assert json.loads(invoice["payload"]) == newest["data"]["object"]
    assert invoice["lines_incomplete"] is False
    lines = sorted(rows(engine, "invoice_line_items"), key=lambda row: row["position"])
    assert [row["id"] for row in lines] == [line["id"] for line in newest["data"]["object"]["lines"]["data"]]
    assert {row["last_event_id"] for row in lines} == {newest["id"]}
    assert one(engine, "invoice_line_sets")["last_event_id"] == newest["id"]
    # Every item a line ever named knows its invoice, exactly once.
    links = rows(engine, "invoice_item_invoices")
    assert len(links) == 30 + 2 and {row["invoice"] for row in links} == {INVOICE_A}
    meter = one(engine, "billing_meters", id=METER)
    assert (meter["status"], meter["last_event_id"]) == ("active", "evt_1SyF14B7WZ01zgkWmtrrea01")
