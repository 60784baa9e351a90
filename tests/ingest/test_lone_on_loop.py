"""On PostgreSQL deliveries are stored from the event loop (a lone one in one round trip, those planned
while a batch is in flight as the next batch), without the hand-over to a writer thread; anything the
loop cannot settle, and what comes while its batch waits for a lock, goes to the writer thread."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text
from starlette.testclient import TestClient

from app.ingest.apply import IngestResult, PlannedEvent
from app.ingest.committer import GroupCommitter, WriterStats
from app.ingest.store import EventStore
from app.mirror.dispatch import apply_event
from app.mirror.envelope import Event, parse_event
from app.mirror.outcome import Outcome
from app.mirror.writes import Writes
from tests.support import (
    POSTGRESQL,
    LiveServer,
    encode,
    fails_for,
    load_fixture,
    make_event,
    signed_headers,
)

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
def test_what_the_loop_cannot_settle_is_returned_for_the_writer(engine: Engine) -> None:
    """EventStore.ingest_on_loop stores nothing of, and gives back (None), a copy of a stored event and
    a batch with one write PostgreSQL refuses; the writer's ingest then settles them: the copy a
    duplicate, the refused event failed, its neighbours applied."""

    def refusing(writes: Writes, event: Event) -> None:
        apply_event(writes, event)
        if event.id.startswith("evt_refused"):
            writes.add("INSERT INTO invoice_line_sets (invoice) VALUES (NULL)", ())  # NOT NULL

    store = EventStore(engine, apply=refusing)
    payment, neighbour, invoice, refused, later, last = store.plan(
        [
            parse_event(encode(payment_event(1, tag="settle"))),
            parse_event(encode(payment_event(2, tag="settle"))),
            parse_event(encode(invoice_event(1))),
            parse_event(encode({**invoice_event(2), "id": "evt_refused_1"})),
            parse_event(encode(payment_event(3, tag="settle"))),
            parse_event(encode(invoice_event(3))),
        ]
    )

    def on_loop(batch: list[PlannedEvent]) -> list[IngestResult] | None:
        store.ready_loop_connection()  # (a failed attempt dropped the one before)
        return asyncio.run(store.ingest_on_loop(batch))

    assert on_loop([payment]) == [IngestResult(payment.id, Outcome.APPLIED)]
    assert on_loop([payment]) is None
    assert on_loop([neighbour, invoice, refused]) is None
    assert stored(engine, "SELECT id FROM stripe_events") == [(payment.id,)]
    assert stored(engine, "SELECT id FROM invoices") == []

    (duplicate,) = store.ingest([payment])
    assert (duplicate.outcome, duplicate.duplicate) == (Outcome.APPLIED, True)
    settled = store.ingest([neighbour, invoice, refused])
    assert [result.outcome for result in settled] == [Outcome.APPLIED, Outcome.APPLIED, Outcome.FAILED]
    assert "invoice_line_sets" in (settled[2].error or "")
    assert stored(engine, "SELECT outcome FROM stripe_events WHERE id = 'evt_refused_1'") == [("failed",)]
    assert stored(engine, "SELECT id FROM invoices") == [("in_loop_001",)]

    assert on_loop([later, last]) == [
        IngestResult(later.id, Outcome.APPLIED),
        IngestResult(last.id, Outcome.APPLIED),
    ]
    store.release_loop_connection()


@pytest.mark.parametrize("db_url", [POSTGRESQL], indirect=True)
def test_what_is_planned_while_the_loop_is_busy_goes_as_one_batch(engine: Engine) -> None:
    """Deliveries submitted in one turn of the event loop: the first is stored at once (nothing was in
    flight), those planned while it is are stored from the loop as the next batch, in one transaction,
    each with its own outcome: new, a second copy of one of them, a handler that failed, a refused
    body."""
    store = EventStore(engine, apply=fails_for("evt_loop_900_1767225600"))
    store.ready_loop_connection()
    events = [parse_event(encode(payment_event(number))) for number in range(12)]
    events += [parse_event(encode(invoice_event(number))) for number in range(12)]
    broken = parse_event(encode(payment_event(900)))

    async def deliver() -> tuple[list[IngestResult], WriterStats]:
        async with GroupCommitter(store) as committer:
            submitted = [committer.submit(event) for event in [*events, events[5], broken]]
            results = await asyncio.gather(*submitted, committer.refuse(b"[]", "not_an_object", "no"))
            return list(results), committer.stats

    results, stats = asyncio.run(deliver())
    outcomes = [result.outcome for result in results]
    assert outcomes == [Outcome.APPLIED] * 25 + [Outcome.FAILED, Outcome.REFUSED]
    assert [result.duplicate for result in results] == [False] * 24 + [True] + [False] * 2
    assert (stats.batches, stats.largest_batch, stats.events, stats.on_loop) == (2, 26, 27, 27)
    assert store.commits == 2
    rows = stored(
        engine, "SELECT outcome, count(*) FROM stripe_events WHERE id LIKE 'evt_loop_%' GROUP BY outcome"
    )
    assert dict(rows) == {"applied": 24, "failed": 1}
    assert stored(engine, "SELECT count(*) FROM dead_letters") == [(1,)]
    assert len(stored(engine, "SELECT id FROM invoices WHERE id LIKE 'in_loop_%'")) == 12


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
    that come meanwhile (after STALLED_SECONDS) are read, stored by the writer thread and answered
    before it."""

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


@pytest.mark.parametrize("db_url", [POSTGRESQL], indirect=True)
def test_in_a_receiver_of_several_processes_only_a_lone_delivery_goes_on_the_loop(engine: Engine) -> None:
    """``batches_on_loop=False`` (``serve --workers 2`` and more): the first delivery of a wave is
    stored from the loop, those that come while it is in flight by the writer thread."""
    store = EventStore(engine)
    store.ready_loop_connection()
    events = [parse_event(encode(payment_event(number, tag="workers"))) for number in range(10)]

    async def deliver() -> tuple[list[IngestResult], WriterStats]:
        async with GroupCommitter(store, batches_on_loop=False) as committer:
            results = await asyncio.gather(*(committer.submit(event) for event in events))
            return list(results), committer.stats

    results, stats = asyncio.run(deliver())
    assert [result.outcome for result in results] == [Outcome.APPLIED] * 10
    assert (stats.events, stats.on_loop) == (10, 1)
    assert stored(engine, "SELECT count(*) FROM invoice_payments WHERE id LIKE 'inpay_workers_%'") == [(10,)]


def invoice_with_lines(number: int, lines: int, *, created: int) -> dict[str, Any]:
    """``invoice_event(number)`` with ``lines`` lines (the event a few hundred kilobytes)."""
    event = invoice_event(number, created=created)
    invoice = event["data"]["object"]
    template = invoice["lines"]["data"][0]
    invoice["lines"] = {
        **invoice["lines"],
        "data": [{**template, "id": f"il_big_{number:03d}_{line:04d}"} for line in range(lines)],
    }
    return event


@pytest.mark.parametrize("db_url", [POSTGRESQL], indirect=True)
def test_a_batch_the_socket_cannot_take_at_once_does_not_block_the_loop(engine: Engine) -> None:
    """PostgreSQL reads a query only as it runs it: while the batch's first write waits for a row
    another transaction holds, megabytes of the batch wait in the socket. Meanwhile the event loop
    goes on (libpq sends what the socket takes as it takes it); a send that waited for the socket
    would hold the loop until the lock is released."""
    store = EventStore(engine)
    store.ingest([parse_event(encode(invoice_event(0)))])
    batch = store.plan(
        [parse_event(encode(invoice_with_lines(n, 120, created=1_767_229_000))) for n in range(60)]
    )
    store.ready_loop_connection()
    with engine.connect() as locker:
        locker.execute(text("SELECT 1 FROM invoices WHERE id = 'in_loop_000' FOR UPDATE"))
        release = threading.Timer(2.0, locker.rollback)  # (from a thread: the loop may be held)

        async def scenario() -> tuple[int, list[IngestResult] | None]:
            ticks = 0

            async def tick() -> None:
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.01)
                    ticks += 1

            ticker = asyncio.create_task(tick())
            storing = asyncio.create_task(store.ingest_on_loop(batch))
            await asyncio.sleep(0.5)
            ticks_while_locked = ticks
            results = await storing
            ticker.cancel()
            return ticks_while_locked, results

        release.start()
        try:
            ticks_while_locked, results = asyncio.run(scenario())
        finally:
            release.join()
    assert ticks_while_locked >= 10
    assert results is not None and [result.outcome for result in results] == [Outcome.APPLIED] * 60
    assert stored(engine, "SELECT count(*) FROM invoice_line_items WHERE id LIKE 'il_big_%'") == [(7200,)]
    store.release_loop_connection()
