"""Build and sign Stripe deliveries for tests: real envelopes, our own HMAC (as stripe-python's tests do)."""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path
from typing import Any

from app.webhook.signature import sign_header

FIXTURES = Path(__file__).parent / "fixtures"
SECRET = "whsec_test_secret_for_billing_mirror"
API_VERSION = "2026-07-29.dahlia"
_counter = itertools.count(1)


def load_fixture(name: str) -> dict[str, Any]:
    """A recorded delivery (an event envelope) from tests/fixtures/."""
    return json.loads((FIXTURES / name).read_text())


def make_event(
    event_type: str,
    obj: dict[str, Any],
    *,
    event_id: str | None = None,
    created: int = 1_767_225_600,
    livemode: bool = False,
    previous_attributes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    data: dict[str, Any] = {"object": copy.deepcopy(obj)}
    if previous_attributes is not None:
        data["previous_attributes"] = previous_attributes
    return {
        "id": event_id or f"evt_test_{next(_counter):08d}",
        "object": "event",
        "api_version": API_VERSION,
        "created": created,
        "data": data,
        "livemode": livemode,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
    }


def encode(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode()


def signed_headers(body: bytes, timestamp: int, secret: str | list[str] = SECRET) -> dict[str, str]:
    return {"Stripe-Signature": sign_header(body, secret, timestamp), "Content-Type": "application/json"}
