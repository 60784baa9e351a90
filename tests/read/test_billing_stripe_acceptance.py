"""Acceptance: the official ``stripe`` package reads invoices, lines, meters, alerts and templates from a
real ``billing-mirror serve`` after signed deliveries of the recorded events."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest
import stripe
from sqlalchemy import Engine

from app.mirror.envelope import parse_event
from app.recording.backfill import backfill_templates, read_list, run_in_transaction
from tests.billing import EVENT_FIXTURES, INVOICE_A, INVOICE_G, METER, fixture_path, recorded
from tests.conftest import LiveServer
from tests.events import encode, signed_headers
from tests.mirror_data import API_KEY

pytestmark = pytest.mark.slow


@pytest.fixture
def client(live_server: Callable[..., LiveServer], engine: Engine) -> stripe.StripeClient:
    server = live_server(BILLING_MIRROR_API_KEYS=API_KEY)
    events = sorted(
        (recorded(name) for name in EVENT_FIXTURES), key=lambda e: (parse_event(encode(e)).created, e["id"])
    )
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for event in events:
            body = encode(event)
            response = http.post(
                "/webhooks/stripe", content=body, headers=signed_headers(body, int(time.time()))
            )
            assert response.status_code == 200 and response.json()["outcome"] == "applied", response.text
    templates = read_list(fixture_path("invoice_rendering_templates.list.json")).data
    run_in_transaction(engine, lambda session: backfill_templates(session, templates))
    return stripe.StripeClient(API_KEY, base_addresses={"api": server.url}, max_network_retries=0)


def test_the_stripe_package_reads_the_billing_resources(client: stripe.StripeClient) -> None:
    paid = client.v1.invoices.list(params={"status": "paid", "limit": 1})
    assert isinstance(paid.data[0], stripe.Invoice) and paid.has_more is True
    assert [invoice.id for invoice in paid.auto_paging_iter()] == ["in_1SyD10B7WZ01zgkWovrpD001", INVOICE_A]
    invoice = client.v1.invoices.retrieve(INVOICE_A)
    assert (invoice.status, invoice.amount_paid, invoice.lines.data[0].id) == (
        "paid",
        4150,
        "il_1SyA12B7WZ01zgkWiiA00001",
    )
    deleted = client.v1.invoices.retrieve("in_1SyE10B7WZ01zgkWdraftE01")
    assert deleted.to_dict() == {"id": "in_1SyE10B7WZ01zgkWdraftE01", "object": "invoice", "deleted": True}
    lines = client.v1.invoices.line_items.list(INVOICE_G, params={"limit": 4})
    assert isinstance(lines.data[0], stripe.InvoiceLineItem)
    assert len(list(lines.auto_paging_iter())) == 10  # the first page the webhook carried
    meters = client.v1.billing.meters.list(params={"status": "active"})
    assert [meter.id for meter in meters.data] == [METER] and isinstance(meters.data[0], stripe.billing.Meter)
    assert client.v1.billing.meters.retrieve(METER).display_name == "API requests (v2)"
    alerts = client.v1.billing.alerts.list(params={"meter": METER})
    assert (
        isinstance(alerts.data[0], stripe.billing.Alert) and alerts.data[0].title == "API requests above 100k"
    )
    templates = client.v1.invoice_rendering_templates.list(params={"status": "active"})
    assert [template.nickname for template in templates.data] == ["EU invoices (VAT)"]
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.invoices.line_items.list("in_missing")
    assert missing.value.http_status == 404 and missing.value.code == "resource_missing"
