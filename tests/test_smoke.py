from __future__ import annotations

from starlette.testclient import TestClient

from tests.events import encode, load_fixture, signed_headers


def test_recorded_payment_is_applied(client: TestClient) -> None:
    body = encode(load_fixture("invoice_payment.paid.json"))
    import time

    response = client.post("/webhooks/stripe", content=body, headers=signed_headers(body, int(time.time())))
    assert response.status_code == 200, response.text
    assert response.json()["outcome"] == "applied"
