"""Shared helpers for the billing resources tests: recorded deliveries under tests/fixtures/billing/."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select
from starlette.testclient import TestClient

from app.db.models import InvoiceItem, item_invoice, item_pending
from app.ingest.store import EventStore
from app.mirror.envelope import parse_event
from app.mirror.handlers.base import Outcome
from tests.events import FIXTURES, encode, load_fixture, signed_headers

BILLING = FIXTURES / "billing"
# One recorded delivery per event type of the billing resources (plus a has_more variant).
EVENT_FIXTURES = sorted(
    path.name
    for path in BILLING.glob("*.json")
    if not path.name.startswith(("invoice_rendering", "invoice_lines"))
)
T0 = 1_767_225_600
INVOICE_A = "in_1SyA10B7WZ01zgkWrnwlA001"
INVOICE_G = "in_1SyK10B7WZ01zgkWmanyG001"
METER = "mtr_test_61SyF10B7WZ01zgkW41Bx2yQ"


def recorded(name: str) -> dict[str, Any]:
    """A recorded billing delivery, e.g. recorded("invoice.paid")."""
    return load_fixture(f"billing/{name if name.endswith('.json') else name + '.json'}")


def snapshot_of(name: str) -> dict[str, Any]:
    return copy.deepcopy(recorded(name)["data"]["object"])


def fixture_path(name: str) -> Path:
    return BILLING / name


def ingest(engine: Engine, *events: dict[str, Any]) -> list[Outcome]:
    """Apply ``events`` in exactly this order, one transaction each (a batch would sort them)."""
    store = EventStore(engine)
    outcomes = []
    for event in events:
        [result] = store.ingest([parse_event(encode(event))])
        assert not isinstance(result, Exception), result
        assert result.error is None, result.error
        outcomes.append(result.outcome)
    return outcomes


def deliver(client: TestClient, event: dict[str, Any]) -> Any:
    body = json.dumps(event, indent=2).encode()
    return client.post("/webhooks/stripe", content=body, headers=signed_headers(body, int(time.time())))


def item_state(engine: Engine, item_id: str) -> tuple[str | None, bool]:
    """(invoice, pending) of an invoice item as a reader sees it."""
    query = select(item_invoice(), item_pending()).where(InvoiceItem.id == item_id)  # type: ignore[arg-type]
    with engine.connect() as connection:
        invoice, pending = connection.execute(query).one()
    return invoice, bool(pending)
