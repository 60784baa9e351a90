"""The HTTP contract of POST /webhooks/stripe, on the real app and a real database."""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from freezegun import freeze_time
from sqlalchemy import Engine
from starlette.testclient import TestClient

from app.main import create_app
from app.mirror import dispatch
from app.mirror.handlers.base import Source
from app.mirror.outcome import Outcome
from app.mirror.writes import Writes
from app.settings import Settings
from app.testing.dump import rows
from app.webhook.signature import compute_signature
from tests.support import (
    BACKENDS,
    SECRET,
    encode,
    load_fixture,
    make_event,
    one,
    signed_headers,
    stored_event,
)

URL = "/webhooks/stripe"


def post(client: TestClient, event: dict[str, Any] | bytes, **kwargs: Any) -> Any:
    body = event if isinstance(event, bytes) else encode(event)
    headers = signed_headers(body, int(time.time()), **kwargs)
    return client.post(URL, content=body, headers=headers)


def assert_error(response: Any, status: int, error_type: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == error_type
    assert error["message"]
    assert SECRET not in response.text
    return dict(error)


def test_recorded_delivery_is_stored_with_its_metadata(client: TestClient, engine: Engine) -> None:
    event = load_fixture("invoice_payment.paid.json")
    body = json.dumps(event, indent=2).encode()  # not compact: the stored payload must be these bytes
    response = post(client, body)
    assert response.status_code == 200
    assert response.json() == {"received": True, "id": event["id"], "outcome": "applied", "duplicate": False}
    stored = stored_event(engine, event["id"])
    assert stored is not None
    assert stored["payload"].encode() == body
    assert stored["type"] == "invoice_payment.paid"
    assert stored["created"] == event["created"]
    assert stored["api_version"] == "2026-07-29.dahlia"
    assert stored["livemode"] is False
    assert stored["outcome"] == "applied"
    assert stored["object_id"] == event["data"]["object"]["id"]
    assert stored["received_at"] is not None and stored["processed_at"] is not None


def test_connect_account_is_stored(client: TestClient, engine: Engine) -> None:
    event = load_fixture("invoiceitem.created.json") | {"account": "acct_1Connected"}
    assert post(client, event).status_code == 200
    assert stored_event(engine, event["id"])["account"] == "acct_1Connected"  # type: ignore[index]


def test_duplicate_is_answered_200_and_applied_once(client: TestClient, engine: Engine) -> None:
    event = load_fixture("invoice_payment.paid.json")
    first, second = post(client, event), post(client, event)
    assert first.json()["duplicate"] is False
    assert second.status_code == 200
    assert second.json() == {"received": True, "id": event["id"], "outcome": "applied", "duplicate": True}
    assert len(rows(engine, "stripe_events")) == 1
    assert stored_event(engine, event["id"])["attempts"] == 1  # type: ignore[index]


def test_unknown_type_is_stored_as_ignored(client: TestClient, engine: Engine) -> None:
    event = load_fixture("plan.created.json")
    response = post(client, event)
    assert response.status_code == 200
    assert response.json()["outcome"] == "ignored"
    assert stored_event(engine, event["id"])["outcome"] == "ignored"  # type: ignore[index]


def test_thin_event_is_verified_and_stored(client: TestClient, engine: Engine) -> None:
    thin = {
        "id": "evt_test_65R9Ijk8EYl3Wpd16Ri5OAqXr4g",
        "object": "v2.core.event",
        "type": "v2.core.event_destination.ping",
        "created": "2026-01-01T00:00:00.000Z",
        "livemode": False,
        "context": None,
        "related_object": {
            "id": "ed_1",
            "type": "v2.core.event_destination",
            "url": "/v2/core/event_destinations/ed_1",
        },
    }
    assert post(client, thin).status_code == 200
    stored = stored_event(engine, thin["id"])
    assert stored is not None and stored["thin"] is True and stored["created"] == 1_767_225_600


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "malformed_header"),
        ({"Stripe-Signature": "not a header"}, "malformed_header"),
        ({"Stripe-Signature": "t=1767225600"}, "no_v1_signature"),
        ({"Stripe-Signature": f"t=1767225600,v1={'0' * 64}"}, "no_matching_signature"),
    ],
)
def test_bad_signatures_are_400(
    client: TestClient, engine: Engine, headers: dict[str, str], code: str
) -> None:
    body = encode(load_fixture("invoice_payment.paid.json"))
    with freeze_time("2026-01-01 00:01:00"):
        response = client.post(URL, content=body, headers=headers)
    assert assert_error(response, 400, "signature_verification_error")["code"] == code
    assert rows(engine, "stripe_events") == []


def test_signature_with_another_secret_is_rejected(client: TestClient, engine: Engine) -> None:
    response = post(client, load_fixture("invoice_payment.paid.json"), secret="whsec_someone_else")
    assert_error(response, 400, "signature_verification_error")
    assert rows(engine, "stripe_events") == []


def test_stale_and_future_timestamps_are_400(client: TestClient, engine: Engine) -> None:
    body = encode(load_fixture("invoice_payment.paid.json"))
    # A frozen clock: with the real one, a slow first request could carry "now" into the next second
    # and make a timestamp 301 s ahead only 300.x s ahead when it is checked.
    with freeze_time("2026-01-01 00:01:00"):
        now = int(time.time())
        for timestamp, code in ((now - 301, "timestamp_too_old"), (now + 301, "timestamp_in_future")):
            response = client.post(URL, content=body, headers=signed_headers(body, timestamp))
            assert assert_error(response, 400, "signature_verification_error")["code"] == code
    assert rows(engine, "stripe_events") == []


def test_rotation_with_two_configured_secrets(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(webhook_secrets=("whsec_new", SECRET))
    with TestClient(create_app(settings)) as client:
        for secret in ("whsec_new", SECRET, ["whsec_new", SECRET]):
            event = make_event(
                "invoiceitem.created", load_fixture("invoiceitem.created.json")["data"]["object"]
            )
            assert post(client, event, secret=secret).status_code == 200
        assert_error(
            post(client, make_event("plan.created", {}), secret="whsec_old"),
            400,
            "signature_verification_error",
        )


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"not json at all", "invalid_json"),
        (b"\xff\xfe\x00", "invalid_json"),
        (b"[1, 2, 3]", "invalid_event"),
        (b'{"id": "evt_1", "object": "charge"}', "invalid_event"),
        (
            b'{"object": "event", "type": "invoice.paid", "created": 1, "data": {"object": {}}}',
            "invalid_event",
        ),
        (
            b'{"id": "evt_1", "object": "event", "type": "invoice.paid", "created": "x", '
            b'"data": {"object": {}}}',
            "invalid_event",
        ),
        (
            b'{"id": "evt_1", "object": "event", "type": "invoice.paid", "created": 1, "data": {}}',
            "invalid_event",
        ),
    ],
)
def test_verified_but_unusable_bodies_are_kept_as_dead_letters(
    client: TestClient, make_settings: Callable[..., Settings], engine: Engine, body: bytes, code: str
) -> None:
    response = post(client, body)
    assert response.status_code == 200, response.text  # stored: Stripe retrying could add nothing
    answer = response.json()
    assert answer["outcome"] == "refused" and answer["error"]["code"] == code
    assert rows(engine, "stripe_events") == []
    (letter,) = rows(engine, "dead_letters")
    assert bytes(letter["body"]) == body and letter["reason"] == code and letter["source"] == "webhook"
    assert letter["message"] in answer["error"]["message"]

    with TestClient(create_app(make_settings(answer_after="applied"))) as applied_only:
        assert assert_error(post(applied_only, body), 400, "invalid_request_error")["code"] == code
    assert len(rows(engine, "dead_letters")) == 2


def test_body_over_the_limit_is_413(make_settings: Callable[..., Settings], engine: Engine) -> None:
    with TestClient(create_app(make_settings(max_body_bytes=2048))) as client:
        event = make_event("invoiceitem.created", {"id": "ii_big", "description": "x" * 4096})
        assert_error(post(client, event), 413, "payload_too_large")

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must hold while streaming
            body = encode(event)
            for start in range(0, len(body), 512):
                yield body[start : start + 512]

        response = client.post(URL, content=chunks(), headers=signed_headers(encode(event), int(time.time())))
        assert_error(response, 413, "payload_too_large")
    assert rows(engine, "stripe_events") == []


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_other_methods_are_405(client: TestClient, method: str) -> None:
    response = client.request(method, URL)
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["allow"]


def test_no_secret_configured_says_how_to_set_one(make_settings: Callable[..., Settings]) -> None:
    with TestClient(create_app(make_settings(webhook_secrets=()))) as client:
        response = post(client, load_fixture("invoice_payment.paid.json"))
    error = assert_error(response, 503, "not_configured")
    assert "STRIPE_WEBHOOK_SECRET" in error["message"]


class BrokenUntilFixed:
    """The real payment handler behind a bug that is fixed between two deliveries."""

    def __init__(self) -> None:
        self.broken = True
        self.calls: list[str] = []


@pytest.fixture
def flaky_payment_handler(monkeypatch: pytest.MonkeyPatch) -> BrokenUntilFixed:
    state = BrokenUntilFixed()
    real = dispatch.SNAPSHOT_HANDLERS["invoice_payment.paid"]

    def handler(writes: Writes, obj: dict[str, Any], source: Source) -> None:
        state.calls.append(source.event_id)
        real(writes, obj, source)
        if state.broken:  # after planning its writes: none of them may reach the mirror
            raise RuntimeError("simulated handler bug")

    monkeypatch.setitem(dispatch.SNAPSHOT_HANDLERS, "invoice_payment.paid", handler)
    return state


def test_handler_failure_is_stored_and_retry_reapplies(
    client: TestClient, engine: Engine, flaky_payment_handler: BrokenUntilFixed
) -> None:
    event = load_fixture("invoice_payment.paid.json")
    failed = post(client, event)
    assert failed.status_code == 200  # stored: the mirror re-applies it, Stripe need not
    assert failed.json()["outcome"] == "failed" and "simulated handler bug" in failed.json()["error"]
    stored = stored_event(engine, event["id"])
    assert stored is not None and stored["outcome"] == "failed" and "simulated handler bug" in stored["error"]
    assert rows(engine, "invoice_payments") == []  # nothing the failed handler planned was written

    flaky_payment_handler.broken = False
    retried = post(client, event)
    assert retried.status_code == 200
    assert retried.json()["outcome"] == "applied"
    stored = stored_event(engine, event["id"])
    assert stored is not None
    assert (stored["outcome"], stored["error"], stored["attempts"]) == ("applied", None, 2)
    assert one(engine, "invoice_payments")["status"] == "paid"
    assert post(client, event).json()["duplicate"] is True
    assert set(flaky_payment_handler.calls) == {event["id"]}


def test_a_failing_event_does_not_undo_its_batch_neighbours(
    make_settings: Callable[..., Settings], engine: Engine, flaky_payment_handler: BrokenUntilFixed
) -> None:
    from app.ingest.store import EventStore
    from app.mirror.envelope import parse_event

    store = EventStore(engine)
    payment = parse_event(encode(load_fixture("invoice_payment.paid.json")))
    item = parse_event(encode(load_fixture("invoiceitem.created.json")))
    results = store.ingest([payment, item])
    assert [r.outcome for r in results] == [Outcome.FAILED, Outcome.APPLIED]
    assert one(engine, "invoice_items")["id"] == item.object_id


def unreachable_url(backend: str, tmp_path: Any) -> str:
    """A database of ``backend`` that cannot be opened: a SQLite file in a missing folder, or a port
    where no PostgreSQL listens."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path}/missing-dir/mirror.db"
    return "postgresql://postgres@127.0.0.1:9/nowhere?connect_timeout=1"


@pytest.mark.parametrize("backend", BACKENDS)
def test_unreachable_database_is_503_and_nothing_claimed(backend: str, tmp_path: Any) -> None:
    url = unreachable_url(backend, tmp_path)
    with TestClient(create_app(Settings(database_url=url, webhook_secrets=(SECRET,)))) as client:
        response = post(client, load_fixture("invoice_payment.paid.json"))
    assert_error(response, 503, "database_unavailable")
    assert response.headers["retry-after"]


def test_signature_is_checked_on_raw_bytes_not_reserialized_json(client: TestClient, engine: Engine) -> None:
    event = load_fixture("invoiceitem.created.json")
    body = json.dumps(event, indent=4, ensure_ascii=True).encode()
    timestamp = int(time.time())
    header = f"t={timestamp},v1={compute_signature(body, SECRET, timestamp)}"
    assert client.post(URL, content=body, headers={"Stripe-Signature": header}).status_code == 200
    compact = encode(event)
    assert client.post(URL, content=compact, headers={"Stripe-Signature": header}).status_code == 400


def test_the_receiver_collects_less_often_and_restores_the_collector_when_it_stops(
    make_settings: Callable[..., Settings],
) -> None:
    before = gc.get_threshold()
    with TestClient(create_app(make_settings())) as client:
        assert gc.get_threshold()[0] == 20_000
        assert client.get("/healthz").status_code == 200
    assert gc.get_threshold() == before


def test_the_receiver_applies_a_failed_event_again_once_its_back_off_has_passed(
    client: TestClient, engine: Engine, flaky_payment_handler: BrokenUntilFixed
) -> None:
    from datetime import UTC, datetime, timedelta

    from app.ingest.retrier import FailedEventRetrier, next_retry_at

    event = load_fixture("invoice_payment.paid.json")
    assert post(client, event).json()["outcome"] == "failed"
    flaky_payment_handler.broken = False  # the fix is deployed
    retrier: FailedEventRetrier = client.app.state.retrier  # type: ignore[attr-defined]
    received = stored_event(engine, event["id"])["received_at"]  # type: ignore[index]
    received = received if received.tzinfo else received.replace(tzinfo=UTC)
    assert next_retry_at(received, 1) == received + timedelta(minutes=1)

    assert client.portal.call(retrier.retry_due, received + timedelta(seconds=30)) == {}  # type: ignore[union-attr]
    assert stored_event(engine, event["id"])["outcome"] == "failed"  # type: ignore[index]
    due = received + timedelta(minutes=1, seconds=1)
    assert client.portal.call(retrier.retry_due, due) == {"applied": 1}  # type: ignore[union-attr]
    stored = stored_event(engine, event["id"])
    assert stored is not None and (stored["outcome"], stored["attempts"]) == ("applied", 2)
    assert one(engine, "invoice_payments")["status"] == "paid"
    assert client.portal.call(retrier.retry_due, datetime.now(UTC) + timedelta(days=1)) == {}  # type: ignore[union-attr]


def test_retries_slow_down_to_one_a_day() -> None:
    from datetime import UTC, datetime, timedelta

    from app.ingest.retrier import next_retry_at

    start = datetime(2026, 1, 1, tzinfo=UTC)
    gaps = [next_retry_at(start, attempts) - start for attempts in range(1, 15)]
    assert gaps[:3] == [timedelta(minutes=1), timedelta(minutes=2), timedelta(minutes=4)]
    assert gaps == sorted(gaps) and len(set(gaps)) == len(gaps)
    assert gaps[-1] - gaps[-2] == timedelta(days=1)


def test_readyz_says_ready_when_the_writer_and_the_database_work(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200 and response.json() == {"status": "ready"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_readyz_is_503_while_the_database_cannot_be_reached(backend: str, tmp_path: Any) -> None:
    url = unreachable_url(backend, tmp_path)
    settings = Settings(database_url=url, webhook_secrets=(SECRET,), database_timeout_seconds=1)
    with TestClient(create_app(settings)) as client:
        response = client.get("/readyz")
        assert response.status_code == 503 and response.json()["status"] == "unavailable"
        assert client.get("/healthz").status_code == 200  # alive all the same
