"""Fuzz: whatever a signed body holds, the receiver answers 2xx and stores it (as an event or as a dead
letter); whatever an unsigned one holds, it answers 400 and stores nothing. On both databases."""

from __future__ import annotations

import json
import time
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select, text
from starlette.testclient import TestClient

from app.db.models import DeadLetter, StripeEvent
from app.mirror.upsert import table_of
from tests.support import signed_headers

URL = "/webhooks/stripe"
TYPES = [
    "invoiceitem.created",
    "invoiceitem.deleted",
    "invoice.created",
    "invoice.updated",
    "invoice.paid",
    "invoice_payment.paid",
    "billing.meter.created",
    "billing.alert.triggered",
    "invoice_rendering_template.updated",
    "plan.created",
]
COLUMNS = [
    "id",
    "date",
    "amount",
    "quantity",
    "customer",
    "invoice",
    "status",
    "created",
    "lines",
    "payments",
]

strings = st.one_of(st.text(max_size=12), st.sampled_from(["\u0000", "\ud800", "ii_1", "in_1", "x" * 300]))
numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([2**63, -(2**63) - 1, 0, 1]),
)
leaves = st.one_of(st.none(), st.booleans(), numbers, strings)
values = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.sampled_from(COLUMNS), children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def envelopes(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly event-shaped objects, any field of any type."""
    obj = draw(st.dictionaries(st.sampled_from(COLUMNS), values, max_size=6))
    obj.setdefault("object", draw(st.sampled_from(["invoiceitem", "invoice", "invoice_payment", "list", 5])))
    envelope: dict[str, Any] = {
        "id": draw(st.one_of(strings, st.just("evt_fuzz"), numbers)),
        "object": draw(st.sampled_from(["event", "v2.core.event", "charge", None])),
        "type": draw(st.one_of(st.sampled_from(TYPES), strings)),
        "created": draw(st.one_of(numbers, strings)),
        "data": draw(st.one_of(st.just({"object": obj}), values)),
        "livemode": draw(st.one_of(st.booleans(), leaves)),
    }
    if draw(st.booleans()):
        envelope["related_object"] = {"id": draw(values), "type": "billing.meter"}
    if draw(st.booleans()):
        envelope["account"] = draw(strings)
    return envelope


def encodings(envelope: dict[str, Any], how: str) -> bytes:
    text_ = json.dumps(envelope)  # NaN and Infinity come out as JavaScript, not JSON: refused
    if how == "utf-16":
        return text_.encode("utf-16")
    return text_.encode()


bodies = st.one_of(
    st.binary(max_size=200),
    st.builds(encodings, envelopes(), st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-16"])),
)


def counts(engine: Engine) -> tuple[int, int]:
    with engine.connect() as connection:
        events = connection.execute(select(func.count()).select_from(table_of(StripeEvent))).scalar_one()
        letters = connection.execute(select(func.count()).select_from(table_of(DeadLetter))).scalar_one()
    return events, letters


def is_stored(engine: Engine, answer: dict[str, Any], body: bytes) -> bool:
    with engine.connect() as connection:
        if answer["outcome"] == "refused":
            found = connection.execute(
                select(func.count())
                .select_from(table_of(DeadLetter))
                .where(table_of(DeadLetter).c.body == body)
            )
        else:
            found = connection.execute(
                text("SELECT count(*) FROM stripe_events WHERE id = :id"), {"id": answer["id"]}
            )
        return int(found.scalar_one()) > 0


FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(body=bodies)
def test_every_signed_body_is_answered_2xx_and_stored(
    client: TestClient, engine: Engine, body: bytes
) -> None:
    response = client.post(URL, content=body, headers=signed_headers(body, int(time.time())))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["received"] is True
    assert answer["outcome"] in ("applied", "stale", "ignored", "failed", "refused")
    assert is_stored(engine, answer, body)


@FUZZ
@given(
    body=bodies,
    header=st.one_of(
        st.none(),
        st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=80),
        st.builds(lambda t: f"t={t},v1={'0' * 64}", st.integers(min_value=-(2**70), max_value=2**70)),
    ),
)
def test_no_unsigned_body_is_stored_or_answered_5xx(
    client: TestClient, engine: Engine, body: bytes, header: str | None
) -> None:
    before = counts(engine)
    headers = {} if header is None else {"Stripe-Signature": header.encode("latin-1")}
    response = client.post(URL, content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "signature_verification_error"
    assert counts(engine) == before
