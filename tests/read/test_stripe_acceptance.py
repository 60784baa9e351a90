"""Acceptance: the official ``stripe`` package, pointed at a real ``billing-mirror serve``, reads the mirror
after real signed webhook deliveries: payments and items (lists with filters, auto-paging both ways,
retrieve, errors), and invoices, lines, meters, alerts and templates from the recorded events."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import stripe
from sqlalchemy import Engine

from app.mirror.envelope import parse_event
from app.recording.backfill import backfill_templates, read_list
from tests.support import (
    API_KEY,
    EVENT_FIXTURES,
    INVOICE_A,
    INVOICE_G,
    METER,
    T0,
    LiveServer,
    encode,
    fixture_path,
    item,
    item_created,
    item_deleted,
    payment,
    payment_event,
    recorded,
    signed_headers,
)

pytestmark = pytest.mark.slow


def deliver(server: LiveServer, events: list[dict[str, Any]]) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for event in events:
            body = encode(event)
            headers = signed_headers(body, int(time.time()))
            response = http.post("/webhooks/stripe", content=body, headers=headers)
            assert response.status_code == 200 and response.json()["outcome"] == "applied", response.text


# ---- invoice payments and invoice items ------------------------------------------------------


@pytest.fixture
def server(live_server: Callable[..., LiveServer]) -> LiveServer:
    server = live_server(BILLING_MIRROR_API_KEYS=f"bm_unused_key,{API_KEY}")
    payments = [payment(f"inpay_tie_{n:02d}", T0 + 100, invoice=f"in_{n % 3}") for n in range(12)]
    payments += [payment(f"inpay_{n:02d}", T0 + n, status="open", ref=f"pi_open_{n}") for n in range(5)]
    items = [
        item(f"ii_{n:02d}", T0 + 10 * (n // 2), customer=f"cus_{n % 2}", invoice=None if n % 3 else "in_0")
        for n in range(14)
    ]
    deliver(server, [payment_event(obj) for obj in payments] + [item_created(obj) for obj in items])
    deliver(server, [item_deleted("ii_04", T0 + 500)])
    return server


@pytest.fixture
def client(server: LiveServer) -> stripe.StripeClient:
    return stripe.StripeClient(API_KEY, base_addresses={"api": server.url}, max_network_retries=0)


@pytest.fixture
def global_stripe(server: LiveServer) -> Iterator[None]:
    """The module-level style (stripe.api_key / stripe.api_base) that much existing code uses."""
    saved = stripe.api_key, stripe.api_base
    stripe.api_key, stripe.api_base = API_KEY, server.url
    yield
    stripe.api_key, stripe.api_base = saved


def test_list_filter_page_and_retrieve_payments(client: stripe.StripeClient) -> None:
    first = client.v1.invoice_payments.list(params={"status": "paid", "limit": 5})
    assert first.object == "list" and first.has_more is True and len(first.data) == 5
    assert all(isinstance(obj, stripe.InvoicePayment) and obj.status == "paid" for obj in first.data)

    everything = [obj.id for obj in first.auto_paging_iter()]
    assert everything == [f"inpay_tie_{n:02d}" for n in reversed(range(12))]  # tie broken by id, desc

    on_invoice = client.v1.invoice_payments.list(params={"invoice": "in_1", "limit": 2})
    assert [obj.id for obj in on_invoice.auto_paging_iter()] == [
        "inpay_tie_10",
        "inpay_tie_07",
        "inpay_tie_04",
        "inpay_tie_01",
    ]
    by_intent = client.v1.invoice_payments.list(
        params={"payment": {"type": "payment_intent", "payment_intent": "pi_open_3"}}
    )
    assert [obj.id for obj in by_intent.data] == ["inpay_03"]
    assert by_intent.data[0].payment.payment_intent == "pi_open_3"

    one = client.v1.invoice_payments.retrieve("inpay_tie_05")
    assert one.id == "inpay_tie_05" and one.amount_paid == 2000 and one.status_transitions.paid_at == T0 + 105

    backwards = client.v1.invoice_payments.list(params={"ending_before": "inpay_01", "limit": 2})
    assert [obj.id for obj in backwards.auto_paging_iter()] == ["inpay_02", "inpay_03", "inpay_04"] + [
        f"inpay_tie_{n:02d}" for n in range(12)
    ]


def test_list_filter_and_retrieve_items(client: stripe.StripeClient) -> None:
    pending = client.v1.invoice_items.list(params={"customer": "cus_1", "pending": True, "limit": 2})
    expected = [f"ii_{n:02d}" for n in reversed(range(14)) if n % 2 == 1 and n % 3]
    assert [obj.id for obj in pending.auto_paging_iter()] == expected
    ranged = client.v1.invoice_items.list(params={"created": {"gte": T0 + 10, "lt": T0 + 30}})
    assert [obj.id for obj in ranged.data] == ["ii_05", "ii_03", "ii_02"]  # ii_04 was deleted
    assert client.v1.invoice_items.list(params={"created": T0 + 60}).data[0].date == T0 + 60
    invoiced = client.v1.invoice_items.list(params={"invoice": "in_0", "limit": 100})
    assert [obj.id for obj in invoiced.data] == ["ii_12", "ii_09", "ii_06", "ii_03", "ii_00"]

    found = client.v1.invoice_items.retrieve("ii_07")
    assert isinstance(found, stripe.InvoiceItem) and found.customer == "cus_1" and found.invoice is None
    gone = client.v1.invoice_items.retrieve("ii_04")
    assert gone.id == "ii_04" and gone.deleted is True


def test_errors_map_to_stripe_exceptions(client: stripe.StripeClient, server: LiveServer) -> None:
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.invoice_payments.retrieve("inpay_missing")
    assert missing.value.http_status == 404 and missing.value.code == "resource_missing"
    with pytest.raises(stripe.InvalidRequestError) as bad_limit:
        client.v1.invoice_items.list(params={"limit": 500})
    assert bad_limit.value.http_status == 400 and bad_limit.value.param == "limit"
    with pytest.raises(stripe.InvalidRequestError) as bad_cursor:
        client.v1.invoice_items.list(params={"starting_after": "ii_nope"})
    assert bad_cursor.value.param == "starting_after" and bad_cursor.value.code == "resource_missing"
    wrong = stripe.StripeClient("bm_not_a_key", base_addresses={"api": server.url}, max_network_retries=0)
    with pytest.raises(stripe.AuthenticationError):
        wrong.v1.invoice_items.list()


def test_module_level_api(global_stripe: None) -> None:
    paid = stripe.InvoicePayment.list(status="paid", invoice="in_2", limit=10)
    assert [obj.id for obj in paid.data] == ["inpay_tie_11", "inpay_tie_08", "inpay_tie_05", "inpay_tie_02"]
    assert stripe.InvoiceItem.retrieve("ii_13").customer == "cus_1"


# ---- invoices, lines, meters, alerts, templates ----------------------------------------------


@pytest.fixture
def billing_client(live_server: Callable[..., LiveServer], engine: Engine) -> stripe.StripeClient:
    server = live_server(BILLING_MIRROR_API_KEYS=API_KEY)
    events = sorted(
        (recorded(name) for name in EVENT_FIXTURES), key=lambda e: (parse_event(encode(e)).created, e["id"])
    )
    deliver(server, events)
    templates = read_list(fixture_path("invoice_rendering_templates.list.json")).data
    backfill_templates(engine, templates)
    return stripe.StripeClient(API_KEY, base_addresses={"api": server.url}, max_network_retries=0)


def test_the_stripe_package_reads_the_billing_resources(billing_client: stripe.StripeClient) -> None:
    paid = billing_client.v1.invoices.list(params={"status": "paid", "limit": 1})
    assert isinstance(paid.data[0], stripe.Invoice) and paid.has_more is True
    assert [invoice.id for invoice in paid.auto_paging_iter()] == ["in_1SyD10B7WZ01zgkWovrpD001", INVOICE_A]
    invoice = billing_client.v1.invoices.retrieve(INVOICE_A)
    assert (invoice.status, invoice.amount_paid, invoice.lines.data[0].id) == (
        "paid",
        4150,
        "il_1SyA12B7WZ01zgkWiiA00001",
    )
    deleted = billing_client.v1.invoices.retrieve("in_1SyE10B7WZ01zgkWdraftE01")
    assert deleted.to_dict() == {"id": "in_1SyE10B7WZ01zgkWdraftE01", "object": "invoice", "deleted": True}
    lines = billing_client.v1.invoices.line_items.list(INVOICE_G, params={"limit": 4})
    assert isinstance(lines.data[0], stripe.InvoiceLineItem)
    assert len(list(lines.auto_paging_iter())) == 10  # the first page the webhook carried
    meters = billing_client.v1.billing.meters.list(params={"status": "active"})
    assert [meter.id for meter in meters.data] == [METER] and isinstance(meters.data[0], stripe.billing.Meter)
    assert billing_client.v1.billing.meters.retrieve(METER).display_name == "API requests (v2)"
    alerts = billing_client.v1.billing.alerts.list(params={"meter": METER})
    assert (
        isinstance(alerts.data[0], stripe.billing.Alert) and alerts.data[0].title == "API requests above 100k"
    )
    templates = billing_client.v1.invoice_rendering_templates.list(params={"status": "active"})
    assert [template.nickname for template in templates.data] == ["EU invoices (VAT)"]
    with pytest.raises(stripe.InvalidRequestError) as missing:
        billing_client.v1.invoices.line_items.list("in_missing")
    assert missing.value.http_status == 404 and missing.value.code == "resource_missing"
