"""Fill a mirror the way production does: Stripe events through EventStore.ingest."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Engine
from starlette.testclient import TestClient

from app.ingest.store import EventStore, IngestResult
from app.mirror.envelope import event_from_json
from app.mirror.handlers.base import Outcome
from tests.events import encode, load_fixture, make_event

API_KEY = "bm_test_key_0123456789abcdef"
OTHER_API_KEY = "bm_test_second_key_fedcba9876543210"


BEARER = {"Authorization": f"Bearer {API_KEY}"}


def get(api: TestClient, path: str, **params: Any) -> Any:
    """GET through the read API, asserting a 200; the decoded JSON body."""
    response = api.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def ids(body: dict[str, Any]) -> list[str]:
    return [obj["id"] for obj in body["data"]]


def error_of(response: Any, status: int) -> dict[str, Any]:
    """Stripe's invalid_request_error object of a response with ``status``."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    return error  # type: ignore[no-any-return]


PAYMENT_TEMPLATE: dict[str, Any] = load_fixture("invoice_payment.paid.json")["data"]["object"]
ITEM_TEMPLATE: dict[str, Any] = load_fixture("invoiceitem.created.json")["data"]["object"]


def payment(
    payment_id: str,
    created: int,
    *,
    status: str = "paid",
    invoice: str = "in_A",
    kind: str = "payment_intent",
    ref: str | None = None,
    amount: int = 2000,
) -> dict[str, Any]:
    obj = copy.deepcopy(PAYMENT_TEMPLATE)
    paid = status == "paid"
    obj.update(
        id=payment_id,
        created=created,
        status=status,
        invoice=invoice,
        amount_requested=amount,
        amount_paid=amount if paid else None,
        payment={"type": kind, kind: ref or f"{kind[:2]}_{payment_id}"},
        status_transitions={
            "paid_at": created + 5 if paid else None,
            "canceled_at": created + 5 if status == "canceled" else None,
        },
    )
    return obj


def item(
    item_id: str,
    date: int,
    *,
    customer: str = "cus_A",
    invoice: str | None = None,
    amount: int = 1000,
    description: str = "Setup fee",
) -> dict[str, Any]:
    obj = copy.deepcopy(ITEM_TEMPLATE)
    obj.update(
        id=item_id,
        date=date,
        customer=customer,
        invoice=invoice,
        amount=amount,
        description=description,
        period={"start": date, "end": date},
    )
    return obj


def payment_event(obj: dict[str, Any]) -> dict[str, Any]:
    # Terminal payments arrive as invoice_payment.paid; open/canceled ones embedded in invoice events.
    if obj["status"] == "paid":
        return make_event("invoice_payment.paid", obj, created=obj["created"] + 10)
    embedded = {"object": "list", "data": [obj], "has_more": False, "url": "/v1/invoice_payments"}
    invoice = {"id": obj["invoice"], "object": "invoice", "payments": embedded}
    return make_event("invoice.updated", invoice, created=obj["created"] + 10)


def item_created(obj: dict[str, Any]) -> dict[str, Any]:
    return make_event("invoiceitem.created", obj, created=obj["date"] + 1)


def item_deleted(item_id: str, created: int) -> dict[str, Any]:
    stub = {"id": item_id, "object": "invoiceitem", "deleted": True}
    return make_event("invoiceitem.deleted", stub, created=created)


def ingest(engine: Engine, events: Iterable[dict[str, Any]]) -> list[IngestResult]:
    parsed = [event_from_json(event, encode(event).decode()) for event in events]
    results = EventStore(engine).ingest(parsed)
    for result in results:
        assert isinstance(result, IngestResult) and result.outcome == Outcome.APPLIED, result
    return [result for result in results if isinstance(result, IngestResult)]
