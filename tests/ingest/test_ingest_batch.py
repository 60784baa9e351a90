"""EventStore's optimistic batch and its careful fallback keep every guarantee of the endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy import event as sqlalchemy_event

from app.db.engine import make_engine
from app.ingest.store import EventStore
from app.mirror.dispatch import apply_event
from app.mirror.envelope import Event, parse_event
from app.mirror.writes import Writes
from tests.support import (
    ITEM_TEMPLATE,
    POSTGRESQL,
    T0,
    encode,
    fails_for,
    item_event,
    items,
    load_fixture,
    make_event,
    one,
    stored,
    stored_event,
)


def test_a_failing_handler_leaves_its_event_failed_and_its_neighbours_applied(engine: Engine) -> None:
    batch = [item_event(f"ii_{n}", 100 + n, event_id=f"evt_{n}") for n in range(5)]
    results = EventStore(engine, apply=fails_for("evt_2")).ingest(batch)
    assert [r.outcome for r in results] == ["applied", "applied", "failed", "applied", "applied"]
    assert "handler bug on evt_2" in (results[2].error or "")
    rows = stored(engine)
    assert rows["evt_2"][0] == "failed" and "handler bug" in (rows["evt_2"][2] or "")
    assert set(items(engine)) == {"ii_0", "ii_1", "ii_3", "ii_4"}  # nothing of evt_2's handler kept

    # Fixed handler: the stored failed event is applied when it comes again; others stay duplicates.
    again = EventStore(engine).ingest(batch)
    assert [(r.outcome, r.duplicate) for r in again] == [("applied", True)] * 2 + [("applied", False)] + [
        ("applied", True)
    ] * 2
    assert stored(engine)["evt_2"] == ("applied", 2, None)
    assert "ii_2" in items(engine)


def test_a_write_the_database_refuses_fails_its_event_only(engine: Engine) -> None:
    """A batch's writes go out together (one pipeline on PostgreSQL), so the refusal comes back for
    the batch: it is redone event by event, and only the event whose write was refused fails."""

    def apply(writes: Writes, event: Event) -> None:
        apply_event(writes, event)
        if event.id == "evt_w2":
            writes.add("INSERT INTO invoice_line_sets (invoice) VALUES (NULL)", ())  # NOT NULL

    batch = [item_event(f"ii_w{n}", 100 + n, event_id=f"evt_w{n}") for n in range(5)]
    results = EventStore(engine, apply=apply).ingest(batch)
    assert [r.outcome for r in results] == ["applied", "applied", "failed", "applied", "applied"]
    assert "invoice_line_sets" in (results[2].error or "")
    assert stored(engine)["evt_w2"][0] == "failed"
    # Its first write (the item itself) was undone with the refused one.
    assert set(items(engine)) == {"ii_w0", "ii_w1", "ii_w3", "ii_w4"}


def test_an_older_snapshot_after_a_newer_one_in_the_same_batch_changes_nothing(engine: Engine) -> None:
    """Sent together, the writes still run in order: the second sees the first one's row."""
    events = [
        item_event("ii_order", 300, event_id="evt_o3"),
        item_event("ii_order", 100, event_id="evt_o1"),
        item_event("ii_other", 100, event_id="evt_o4"),
        item_event("ii_order", 200, event_id="evt_o2"),
    ]
    results = EventStore(engine).ingest(events, keep_order=True)
    assert [r.outcome for r in results] == ["applied", "stale", "applied", "stale"]
    assert items(engine) == {"ii_order": "evt_o3", "ii_other": "evt_o4"}


def test_duplicates_inside_one_batch_and_across_batches(engine: Engine) -> None:
    first = item_event("ii_dup", 100, event_id="evt_dup")
    twin = parse_event(first.raw.encode())
    results = EventStore(engine).ingest([first, twin])
    assert [(r.outcome, r.duplicate) for r in results] == [("applied", False), ("applied", True)]
    later = EventStore(engine).ingest([twin])
    assert [(r.outcome, r.duplicate) for r in later] == [("applied", True)]
    assert stored(engine)["evt_dup"][1] == 1


def test_older_snapshot_is_stale_in_a_batch(engine: Engine) -> None:
    newer = item_event("ii_same", 200, event_id="evt_new")
    older = item_event("ii_same", 100, event_id="evt_old")
    results = EventStore(engine).ingest([newer, older], keep_order=True)
    assert [r.outcome for r in results] == ["applied", "stale"]
    assert items(engine)["ii_same"] == "evt_new"


def test_batches_in_order_keep_the_outcomes_of_events_applied_one_after_another(engine: Engine) -> None:
    """A replay's batches (``ingest_in_order``: on PostgreSQL each batch's first query written by the
    thread that plans it, then sent by a writer thread): stale, duplicate inside a batch and across
    batches, as if each event came alone."""
    first = item_event("ii_a", 100, event_id="evt_a1")
    batches = [
        [
            first,
            item_event("ii_a", 300, event_id="evt_a3"),
            item_event("ii_a", 200, event_id="evt_a2"),
            parse_event(first.raw.encode()),
            item_event("ii_b", 100, event_id="evt_b1"),
        ],
        [item_event("ii_c", 100, event_id="evt_c1"), item_event("ii_b", 50, event_id="evt_b0")],
        [item_event("ii_a", 200, event_id="evt_a2"), item_event("ii_d", 100, event_id="evt_d1")],
    ]
    results = [
        [(result.outcome, result.duplicate) for result in batch]  # type: ignore[union-attr]
        for batch in EventStore(engine).ingest_in_order(batches)
    ]
    assert results == [
        [("applied", False), ("applied", False), ("stale", False), ("applied", True), ("applied", False)],
        [("applied", False), ("stale", False)],
        [("stale", True), ("applied", False)],
    ]
    assert items(engine) == {"ii_a": "evt_a3", "ii_b": "evt_b1", "ii_c": "evt_c1", "ii_d": "evt_d1"}
    assert {event_id: row[:2] for event_id, row in stored(engine).items()} == {
        "evt_a1": ("applied", 1),
        "evt_a3": ("applied", 1),
        "evt_a2": ("stale", 1),
        "evt_b1": ("applied", 1),
        "evt_c1": ("applied", 1),
        "evt_b0": ("stale", 1),
        "evt_d1": ("applied", 1),
    }


def test_every_event_is_stored_with_its_exact_body(engine: Engine) -> None:
    body = json.dumps(
        make_event("invoiceitem.created", {**ITEM_TEMPLATE, "id": "ii_raw", "description": "Café ☕"}),
        indent=1,
        ensure_ascii=False,
    )
    EventStore(engine).ingest([parse_event(body.encode())])
    with engine.connect() as connection:
        (payload,) = connection.execute(text("SELECT payload FROM stripe_events")).one()
    assert payload == body


def test_a_failed_event_in_a_batch_of_known_events_is_retried_with_attempts_counted(engine: Engine) -> None:
    event = item_event("ii_retry", 100, event_id="evt_retry")
    store_with_bug = EventStore(engine, apply=fails_for("evt_retry"))
    store_with_bug.ingest([event])
    store_with_bug.ingest([event])
    assert stored(engine)["evt_retry"][:2] == ("failed", 2)
    EventStore(engine).ingest([event, item_event("ii_other", 100)])
    assert stored(engine)["evt_retry"][:2] == ("applied", 3)


# Only PostgreSQL: SQLite writers hold the database lock for the whole batch, nobody can store meanwhile.
@pytest.mark.parametrize("db_url", [POSTGRESQL], indirect=True)
def test_an_event_stored_by_another_receiver_meanwhile_is_a_duplicate(engine: Engine, db_url: str) -> None:
    """Two receivers on one PostgreSQL: the other one stores the same event after this batch looked
    it up and before this batch stores it. A third connection holds a row lock that this batch's
    first write waits for, which opens exactly that window."""
    EventStore(engine).ingest([item_event("ii_race_neighbour", 50, event_id="evt_race_old")])
    neighbour = item_event("ii_race_neighbour", 100, event_id="evt_race_neighbour")
    event = item_event("ii_race", 100, event_id="evt_race")
    other_receiver = make_engine(db_url)
    locker = engine.connect()
    try:
        locker.execute(text("SELECT 1 FROM invoice_items WHERE id = 'ii_race_neighbour' FOR UPDATE"))
        with ThreadPoolExecutor(1) as pool:
            batch = pool.submit(EventStore(engine).ingest, [neighbour, event], keep_order=True)
            wait_until_blocked_on_a_lock(engine)
            EventStore(other_receiver).ingest([event])  # commits while the batch waits
            locker.rollback()
            results = batch.result(timeout=30)
    finally:
        locker.close()
        other_receiver.dispose()
    assert [(r.event_id, r.outcome, r.duplicate) for r in results] == [
        ("evt_race_neighbour", "applied", False),
        ("evt_race", "applied", True),
    ]
    assert stored(engine)["evt_race"] == ("applied", 1, None)
    assert set(items(engine)) == {"ii_race", "ii_race_neighbour"}


def wait_until_blocked_on_a_lock(engine: Engine) -> None:
    deadline = time.monotonic() + 20
    query = text(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    while time.monotonic() < deadline:
        with engine.connect() as connection:
            if connection.execute(query).scalar():
                return
        time.sleep(0.02)
    raise AssertionError("the batch never waited for the locked row")


# Only PostgreSQL: sqlite3 has no pipelines, in process a statement costs no round trip.
@pytest.mark.parametrize("db_url", [POSTGRESQL], indirect=True)
def test_on_postgresql_a_batch_sends_its_writes_in_one_pipeline(engine: Engine) -> None:
    """One round trip for all the writes of a batch instead of one per statement (the row counts,
    and so the outcomes, are the same: see the tests above)."""
    from app.mirror.writes import execute_writes_of_events

    events = [item_event(f"ii_p{n}", 100 + n, event_id=f"evt_p{n}") for n in range(4)]
    events.append(item_event("ii_p0", 50, event_id="evt_p_old"))  # older: changes nothing
    planned = EventStore(engine).plan(events)
    syncs = []

    class Observed:
        """The psycopg connection, with its pipeline syncs counted."""

        def __init__(self, connection: Any) -> None:
            self.connection = connection

        def __getattr__(self, name: str) -> Any:
            return getattr(self.connection, name)

        @contextlib.contextmanager
        def pipeline(self) -> Iterator[Any]:
            with self.connection.pipeline() as pipeline:
                real_sync = pipeline.sync
                pipeline.sync = lambda: (syncs.append(1), real_sync())[1]
                yield pipeline

    with engine.begin() as connection:
        driver = connection.connection.driver_connection
        changes = execute_writes_of_events(Observed(driver), [p.writes for p in planned])
    assert changes == [1, 1, 1, 1, 0]
    assert syncs == [1]


def test_a_lone_event_with_several_writes_takes_one_round_trip_and_its_outcome(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deliveries mostly come one at a time: an invoice's writes (the invoice, its lines, the lines
    it no longer has) and its stripe_events row go in one round trip on PostgreSQL, the row taking
    its outcome from whether a write changed a row; applied, stale, duplicate and failed as ever."""
    from app.mirror import pipelined_query

    round_trips: list[int] = []
    real_run_pipeline = pipelined_query.run_pipeline

    def counted(*args: Any) -> Any:
        round_trips.append(1)
        return real_run_pipeline(*args)

    monkeypatch.setattr(pipelined_query, "run_pipeline", counted)
    invoice = load_fixture("billing/invoice.created.json")["data"]["object"]
    newer = copy.deepcopy(invoice)
    newer["lines"]["data"] = newer["lines"]["data"][:1]  # one line removed from the draft
    newer["description"] = "newer"
    store = EventStore(engine)

    def ingest_alone(obj: dict[str, Any], event_id: str, created: int) -> tuple[str, bool]:
        round_trips.clear()
        event = parse_event(encode(make_event("invoice.updated", obj, event_id=event_id, created=created)))
        assert len(store.plan([event])[0].writes) > 1
        (result,) = store.ingest([event])
        assert result.outcome == stored(engine)[event_id][0]
        return result.outcome, result.duplicate

    assert ingest_alone(invoice, "evt_lone_1", T0) == ("applied", False)
    assert ingest_alone(newer, "evt_lone_3", T0 + 20) == ("applied", False)
    if engine.dialect.name == "postgresql":
        assert round_trips == [1]
    older = dict(newer, description="older")
    assert ingest_alone(older, "evt_lone_2", T0 + 10) == ("stale", False)  # older than the mirror's
    assert ingest_alone(newer, "evt_lone_3", T0 + 20) == ("applied", True)
    assert one(engine, "invoices", id=invoice["id"])["last_event_id"] == "evt_lone_3"
    assert stored_event(engine, "evt_lone_2")["processed_at"] is not None  # type: ignore[index]
    with engine.connect() as connection:
        lines = connection.execute(
            text("SELECT id FROM invoice_line_items WHERE invoice = :id"), {"id": invoice["id"]}
        ).all()
    assert [line.id for line in lines] == [newer["lines"]["data"][0]["id"]]

    def refused_write(writes: Writes, event: Event) -> None:
        apply_event(writes, event)
        writes.add("INSERT INTO invoice_line_sets (invoice) VALUES (NULL)", ())  # NOT NULL

    failing = dict(newer, description="never stored")
    event = parse_event(
        encode(make_event("invoice.updated", failing, event_id="evt_lone_4", created=T0 + 30))
    )
    (result,) = EventStore(engine, apply=refused_write).ingest([event])
    assert (result.outcome, stored(engine)["evt_lone_4"][0]) == ("failed", "failed")
    assert one(engine, "invoices", id=invoice["id"])["last_event_id"] == "evt_lone_3"


def test_several_writer_threads_share_the_work_and_answer_every_event(engine: Engine) -> None:
    from app.ingest.committer import GroupCommitter

    batch = [item_event(f"ii_t{n % 7}", 100 + n, event_id=f"evt_t{n}") for n in range(60)]

    async def scenario() -> list[Any]:
        committer = GroupCommitter(EventStore(engine), max_batch=8, writers=3)
        committer.start()
        try:
            return list(await asyncio.gather(*(committer.submit(event) for event in batch)))
        finally:
            committer.stop()

    results = asyncio.run(scenario())
    assert [r.event_id for r in results] == [e.id for e in batch]
    assert all(r.outcome in ("applied", "stale") for r in results)
    # Whatever the interleaving, each item ends at its newest snapshot.
    assert items(engine) == {f"ii_t{k}": f"evt_t{max(n for n in range(60) if n % 7 == k)}" for k in range(7)}


# Only PostgreSQL: a SQLite receiver writes through its writer process, which holds its own connection.
@pytest.mark.parametrize("db_url", [POSTGRESQL], indirect=True)
def test_a_writer_thread_keeps_one_connection_from_batch_to_batch(engine: Engine) -> None:
    """A receiver's writer takes a connection from the pool once, not once per batch (a lone delivery
    is a batch), and gives it back when it ends; the transactions on it are as before."""
    checkouts: list[int] = []
    sqlalchemy_event.listen(engine, "checkout", lambda *_: checkouts.append(1))
    store = EventStore(engine)

    def backend() -> int:
        with store._transaction() as driver:  # the connection a batch would run on
            return int(driver.info.backend_pid)

    with store.holding_a_connection():
        first = backend()
        results = [store.ingest([item_event(f"ii_held{n}", 100 + n)])[0] for n in range(3)]
        assert backend() == first
        assert engine.pool.checkedout() == 1  # type: ignore[attr-defined]
    assert [result.outcome for result in results] == ["applied"] * 3
    assert len(checkouts) == 1
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    store.ingest([item_event("ii_held_after", 100)])  # outside the block: one checkout per batch
    assert len(checkouts) == 2


@pytest.mark.parametrize("db_url", [POSTGRESQL], indirect=True)
@pytest.mark.parametrize("idle", [False, True], ids=["recently-used", "idle"])
def test_a_held_connection_that_was_lost_is_replaced(
    engine: Engine, idle: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer's connection is cut (PostgreSQL restarted, a proxy timed out): when it has been idle
    the ping before its next batch finds out, when it was just used the batch fails on it and is
    retried on a new one; either way the next delivery is stored, on another backend."""
    from app.db import engine as engines
    from app.mirror import pipelined_query

    failed_round_trips: list[BaseException] = []
    real_run_pipeline = pipelined_query.run_pipeline

    def observed(*args: Any) -> Any:
        try:
            return real_run_pipeline(*args)
        except BaseException as exc:
            failed_round_trips.append(exc)
            raise

    monkeypatch.setattr(pipelined_query, "run_pipeline", observed)
    store = EventStore(engine)
    with store.holding_a_connection():
        store.ingest([item_event("ii_lost0", 100)])
        with store._transaction() as driver:
            lost = int(driver.info.backend_pid)
        with engine.connect() as other:  # another connection of the pool
            other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": lost})
        if idle:
            monkeypatch.setattr(engines, "RECENT_SECONDS", 0.0)  # as if it waited past it
        (result,) = store.ingest([item_event("ii_lost1", 100)])
        with store._transaction() as driver:
            assert int(driver.info.backend_pid) != lost
    assert result.outcome == "applied"
    assert set(items(engine)) == {"ii_lost0", "ii_lost1"}
    assert len(failed_round_trips) == (0 if idle else 1)  # idle: found by the ping, before the batch
