"""End to end through real uvicorn processes: the CLI, HTTP, several workers, one database."""

from __future__ import annotations

import asyncio
import copy
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from app.testing.dump import rows
from tests.support import (
    PROJECT_ROOT,
    LiveServer,
    blast,
    encode,
    load_fixture,
    make_event,
    one,
    signed_headers,
)

T = 1_767_225_600
pytestmark = pytest.mark.slow


def deliver(url: str, event: dict[str, Any]) -> httpx.Response:
    body = encode(event)
    return httpx.post(f"{url}/webhooks/stripe", content=body, headers=signed_headers(body, int(time.time())))


def test_recorded_deliveries_end_to_end(live_server: Callable[..., LiveServer], engine: Engine) -> None:
    server = live_server()
    names = [
        "invoiceitem.created.json",
        "invoice_payment.paid.json",
        "invoice.paid.json",
        "invoiceitem.deleted.json",
        "plan.created.json",
    ]
    outcomes = [deliver(server.url, load_fixture(name)).json()["outcome"] for name in names]
    assert outcomes == ["applied", "applied", "applied", "applied", "ignored"]
    assert one(engine, "invoice_items")["deleted"] is True
    assert one(engine, "invoice_payments")["status"] == "paid"
    assert len(rows(engine, "stripe_events")) == len(names)

    assert httpx.get(f"{server.url}/webhooks/stripe").status_code == 405
    bad = httpx.post(
        f"{server.url}/webhooks/stripe", content=b"{}", headers={"Stripe-Signature": "t=1,v1=00"}
    )
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "signature_verification_error"


def payment_snapshot(pid: str, step: int) -> dict[str, Any]:
    obj = copy.deepcopy(load_fixture("invoice_payment.paid.json")["data"]["object"])
    paid = step == 9
    obj.update(
        id=pid,
        amount_paid=step * 100 if paid else None,
        amount_requested=step * 100,
        status="paid" if paid else "open",
        status_transitions={"paid_at": T + step if paid else None, "canceled_at": None},
    )
    return obj


def test_concurrent_receivers_lose_no_update(live_server: Callable[..., LiveServer], engine: Engine) -> None:
    """Three server processes, many concurrent deliveries about the same objects, duplicates included."""
    server = live_server(workers=3)
    objects = [f"inpay_conc_{n}" for n in range(6)]
    events = [
        make_event(
            "invoice_payment.paid",
            payment_snapshot(pid, step),
            created=T + step,
            event_id=f"evt_{pid}_{step}",
        )
        for pid in objects
        for step in range(10)
    ]
    items = [
        make_event(
            "invoiceitem.created",
            load_fixture("invoiceitem.created.json")["data"]["object"] | {"id": "ii_conc", "amount": n},
            created=T + n,
            event_id=f"evt_ii_{n}",
        )
        for n in range(20)
    ]
    items.append(
        make_event(
            "invoiceitem.deleted",
            {"id": "ii_conc", "object": "invoiceitem", "deleted": True},
            created=T + 5,
            event_id="evt_ii_del",
        )
    )
    bodies = [encode(event) for event in events + items] * 3  # every event delivered three times
    random.Random(7).shuffle(bodies)
    statuses = asyncio.run(blast(server.url, bodies, concurrency=24))
    assert statuses.count(200) == len(statuses), {s: statuses.count(s) for s in set(statuses)}

    stored = rows(engine, "stripe_events")
    assert len(stored) == len(events) + len(items)
    assert all(event["outcome"] in ("applied", "stale") for event in stored)
    for pid in objects:
        row = one(engine, "invoice_payments", id=pid)
        assert (row["status"], row["paid_at"], row["last_event_id"]) == ("paid", T + 9, f"evt_{pid}_9")
    item = one(engine, "invoice_items", id="ii_conc")
    assert (item["amount"], item["deleted"], item["last_event_id"]) == (19, True, "evt_ii_19")


def test_serve_refuses_to_start_without_a_secret(tmp_path: Any) -> None:
    env = {k: v for k, v in os.environ.items() if k != "STRIPE_WEBHOOK_SECRET"}
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'x.db'}"
    result = subprocess.run(
        [sys.executable, "-m", "app.cli.main", "serve", "--port", "1"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "STRIPE_WEBHOOK_SECRET" in result.stderr
