"""A delivery that arrives alone (nothing queued or being written) is stored from the event loop in one
round trip, without the hand-over to a writer thread; anything that round trip cannot settle goes to
the writer thread as before."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text
from starlette.testclient import TestClient

from app.ingest.apply import IngestResult, PlannedEvent
from app.ingest.store import EventStore
from app.mirror.dispatch import apply_event
from app.mirror.envelope import Event, parse_event
from app.mirror.outcome import Outcome
from app.mirror.writes import Writes
from tests.support import POSTGRESQL, LiveServer, encode, load_fixture, make_event, signed_headers

PAYMENT = load_fixture("invoice_payment.paid.json")["data"]["object"]
INVOICE = load_fixture("invoice.paid.json")["data"]["object"]


def payment_event(number: int, *, created: int = 1_767_225_600, tag: str = "loop") -> dict[str, Any]:
    payment = {**PAYMENT, "id": f"inpay_{tag}_{number:03d}", "amount_paid": 100 + number}
    return make_event(
        "invoice_payment.paid", payment, event_id=f"evt_{tag}_{number:03d}_{created}", created=created
    )


def invoice_event(number: int, *, created: int = 1_767_225_600) -> dict[str, Any]:
    invoice_id = f"in_loop_{number:03d}"
    lines = [
        {**line, "id": f"{line['id']}_{number:03d}", "invoice": invoice_id}
        for line in INVOICE["lines"]["data"]
    ]
    invoice = {**INVOICE, "id": invoice_id, "lines": {**INVOICE["lines"], "data": lines}}
    return make_event(
        "invoice.paid", invoice, event_id=f"evt_loop_invoice_{number:03d}_{created}", created=created
    )


def post(client: TestClient, event: dict[str, Any]) -> dict[str, Any]:
    body = encode(event)
    response = client.post("/webhooks/stripe", content=body, headers=signed_headers(body, int(time.time())))
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def writer_stats(client: TestClient) -> dict[str, int]:
    stats: dict[str, int] = client.get("/healthz").json()["writer"]
    return stats


def wait_until_on_loop(client: TestClient, tag: str) -> int:
    """Deliver payments one at a time until one is stored from the event loop (its connection is
    taken in a thread when the first lone delivery asks for it); the number delivered."""
    for number in range(200):
        before = writer_stats(client)["on_loop"]
        assert post(client, payment_event(number, tag=tag))["outcome"] == "applied"
        if writer_stats(client)["on_loop"] > before:
            return number + 1
        time.sleep(0.01)
    raise AssertionError("no delivery was stored from the event loop")


def stored(engine: Engine, sql: str) -> list[Any]:
    with engine.connect() as connection:
        return list(connection.execute(text(sql)).all())


def test_deliveries_one_at_a_time_are_stored_from_the_event_loop(client: TestClient, engine: Engine) -> None:
    """On PostgreSQL every one skips the writer thread once the loop has its connection (the first
    lone delivery has a thread take it); on SQLite every one goes to the writer as before. Outcomes
    are the same either way."""
    postgres = engine.dialect.name == "postgresql"
    warm_up = wait_until_on_loop(client, "warm") if postgres else 0
    before = writer_stats(client)
    answers = []
    for number in range(15):
        answers.append(post(client, payment_event(number)))
        answers.append(post(client, invoice_event(number)))
    answers.append(post(client, payment_event(3, created=1_767_225_000)))  # older: stale
    answers.append(post(client, invoice_event(3, created=1_767_225_000)))

    assert [answer["outcome"] for answer in answers] == ["applied"] * 30 + ["stale"] * 2
    assert not any(answer["duplicate"] for answer in answers)
    stats = writer_stats(client)
    assert (before["events"], stats["events"]) == (warm_up, warm_up + 32)
    assert stats["on_loop"] - before["on_loop"] == (32 if postgres else 0), stats
    outcomes = stored(
        engine, "SELECT outcome, count(*) FROM stripe_events WHERE id LIKE 'evt_loop_%' GROUP BY outcome"
    )
    assert dict(outcomes) == {"applied": 30, "stale": 2}
    payments = dict(
        stored(engine, "SELECT id, amount_paid FROM invoice_payments WHERE id LIKE 'inpay_loop_%'")
    )
    assert payments == {f"inpay_loop_{number:03d}": 100 + number for number in range(15)}
    lines = stored(engine, "SELECT invoice, count(*) FROM invoice_line_items GROUP BY invoice")
    expected_lines = len(INVOICE["lines"]["data"])
    assert dict(lines) == {f"in_loop_{number:03d}": expected_lines for number in range(15)}


@pytest.mark.parametrize("db_url", [POSTGRESQL], indirect=True)
def test_a_duplicate_on_the_loop_is_answered_by_the_writer(client: TestClient, engine: Engine) -> None:
    """The second copy of an event fails its round trip on the loop (the stored event's key): the
    writer thread answers it as a duplicate, and the next deliveries are stored from the loop again."""
    wait_until_on_loop(client, "warm")
    again = payment_event(1, tag="dup")
    assert post(client, again) == {
        "received": True,
        "id": again["id"],
        "outcome": "applied",
        "duplicate": False,
    }
    on_loop = writer_stats(client)["on_loop"]
    assert post(client, again) == {
        "received": True,
        "id": again["id"],
        "outcome": "applied",
        "duplicate": True,
    }
    assert writer_stats(client)["on_loop"] == on_loop
    wait_until_on_loop(client, "after")
    assert stored(engine, f"SELECT count(*) FROM stripe_events WHERE id = '{again['id']}'") == [(1,)]


@pytest.mark.parametrize("db_url", [POSTGRESQL], indirect=True)
def test_what_the_loops_round_trip_cannot_settle_is_returned_for_the_writer(engine: Engine) -> None:
    """EventStore.ingest_on_loop gives back, planned and with nothing of it stored, an event whose
    write PostgreSQL refuses and a copy of a stored event; the writer's ingest then settles them."""

    def refusing(writes: Writes, event: Event) -> None:
        apply_event(writes, event)
        if event.id.startswith("evt_refused"):
            writes.add("INSERT INTO invoice_line_sets (invoice) VALUES (NULL)", ())  # NOT NULL

    store = EventStore(engine, apply=refusing)
    store.ready_loop_connection()
    payment = parse_event(encode(payment_event(1, tag="settle")))
    refused = parse_event(encode({**invoice_event(1), "id": "evt_refused_1"}))

    async def on_loop() -> list[Any]:
        return [await store.ingest_on_loop(event) for event in (payment, payment, refused)]

    first, again, refused_back = asyncio.run(on_loop())
    assert first == IngestResult(payment.id, Outcome.APPLIED)
    assert isinstance(again, PlannedEvent) and isinstance(refused_back, PlannedEvent)
    assert stored(engine, "SELECT id FROM stripe_events") == [(payment.id,)]
    assert stored(engine, "SELECT id FROM invoices") == []
    (duplicate,) = store.ingest([again])
    assert (duplicate.outcome, duplicate.duplicate) == (Outcome.APPLIED, True)
    (failed,) = store.ingest([refused_back])
    assert failed.outcome == Outcome.FAILED and "invoice_line_sets" in (failed.error or "")
    assert stored(engine, "SELECT outcome FROM stripe_events WHERE id = 'evt_refused_1'") == [("failed",)]
    assert stored(engine, "SELECT id FROM invoices") == []
    store.ready_loop_connection()  # a new one: the failed attempts dropped theirs
    later = parse_event(encode(payment_event(2, tag="settle")))
    assert asyncio.run(store.ingest_on_loop(later)) == IngestResult(later.id, Outcome.APPLIED)
    store.release_loop_connection()


@pytest.mark.parametrize("db_url", [POSTGRESQL], indirect=True)
def test_the_loops_connection_lost_sends_the_delivery_to_the_writer(
    client: TestClient, engine: Engine
) -> None:
    """Every connection of the receiver killed between two deliveries: the next one fails on the
    loop's connection and is stored by the writer thread (which replaces its own), not answered 503."""
    wait_until_on_loop(client, "warm")
    with engine.connect() as connection:
        killed = connection.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ).scalar_one()
    assert killed >= 2  # the writer thread's and the loop's

    event = payment_event(1, tag="lost")
    assert post(client, event)["outcome"] == "applied"
    assert stored(engine, f"SELECT outcome FROM stripe_events WHERE id = '{event['id']}'") == [("applied",)]
    wait_until_on_loop(client, "again")  # the loop takes a new connection


@pytest.fixture
def server(live_server: Callable[..., LiveServer]) -> Iterator[LiveServer]:
    yield live_server()


@pytest.mark.parametrize("db_url", [POSTGRESQL], indirect=True)
def test_a_lone_delivery_waiting_for_a_lock_holds_up_no_other(server: LiveServer, engine: Engine) -> None:
    """A delivery stored from the loop waits for a row another transaction has locked; the deliveries
    that come meanwhile are read, stored by the writer thread and answered before it."""

    async def scenario() -> tuple[list[httpx.Response], httpx.Response, bool, int]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:

            async def send(event: dict[str, Any]) -> httpx.Response:
                body = encode(event)
                return await client.post(
                    "/webhooks/stripe", content=body, headers=signed_headers(body, int(time.time()))
                )

            for number in range(200):  # until the loop has its connection
                before = (await client.get("/healthz")).json()["writer"]["on_loop"]
                assert (await send(payment_event(number, tag="warm"))).status_code == 200
                if (await client.get("/healthz")).json()["writer"]["on_loop"] > before:
                    break
            else:
                raise AssertionError("no delivery was stored from the event loop")
            on_loop = (await client.get("/healthz")).json()["writer"]["on_loop"]
            with engine.connect() as locker:
                locker.execute(text("SELECT 1 FROM invoice_payments WHERE id = 'inpay_warm_000' FOR UPDATE"))
                newer = payment_event(0, tag="warm", created=1_767_229_999)
                waiting = asyncio.create_task(send(newer))
                await asyncio.sleep(0.3)
                others = await asyncio.gather(*(send(payment_event(n, tag="other")) for n in range(5)))
                blocked = not waiting.done()
                locker.rollback()
            return others, await waiting, blocked, on_loop

    newer_id = payment_event(0, tag="warm", created=1_767_229_999)["id"]
    others, waited, blocked, on_loop_before = asyncio.run(scenario())
    assert blocked, "the delivery should have been waiting for the lock meanwhile"
    assert [response.json()["outcome"] for response in others] == ["applied"] * 5
    assert waited.status_code == 200 and waited.json()["outcome"] == "applied", waited.text
    stats = httpx.get(f"{server.url}/healthz").json()["writer"]
    assert stats["on_loop"] == on_loop_before + 1  # the one that waited; the five went to the writer
    assert stored(engine, "SELECT last_event_id FROM invoice_payments WHERE id = 'inpay_warm_000'") == [
        (newer_id,)
    ]
    assert len(stored(engine, "SELECT id FROM invoice_payments WHERE id LIKE 'inpay_other_%'")) == 5
