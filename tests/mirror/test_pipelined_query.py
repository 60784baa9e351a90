"""PostgreSQL batches go as pipelined queries (app.mirror.pipelined_query): values sent in our text
format must read back exactly as psycopg's own parameters do, only statements with one possible plan
are PREPAREd, and a failed query leaves the connection knowing which statements it has; the keyed
statements (an invoice's lines) are PREPAREd too and keep to their indexes."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from app.db.engine import make_engine
from app.ingest.store import EventStore
from app.mirror import pipelined_query
from app.mirror.envelope import parse_event
from tests.support import T0, encode, load_fixture, make_event, reset

TRICKY_TEXT = [
    "",
    "it's",
    "''",
    "back\\slash \\' \\\\",
    "line\nbreak\ttab\r",
    "Żółć ☃ 請求書 🧾",
    "%s %(name)s %% $1",
    '{"a": "b"}',
    "E'x'",
]


def _driver_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


@pytest.fixture
def connection(pg_session_database: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(_driver_url(pg_session_database), autocommit=True) as conn:
        yield conn


VALUES: list[tuple[Any, str]] = [
    *((text, "text") for text in TRICKY_TEXT),
    (None, "text"),
    (0, "bigint"),
    (-(2**63), "bigint"),
    (2**63 - 1, "bigint"),
    (True, "boolean"),
    (False, "boolean"),
    (1.5, "double precision"),
    (-1e300, "double precision"),
    (-5, "integer"),
    (Decimal("-0.5"), "numeric"),
    (float("inf"), "double precision"),
    (Decimal("12.345"), "numeric"),
    (datetime(2026, 12, 7, 6, 5, 4, 321000, tzinfo=UTC), "timestamptz"),
    (b"\x00\xff'\\raw", "bytea"),
    (["evt_1", "it's", 'quote " and \\', None, "Żółć"], "text[]"),
    ([], "text[]"),
    (Jsonb({"k": "it's", "n": None, "list": [1, "\\"]}), "jsonb"),
]


@pytest.mark.postgres
@pytest.mark.parametrize(("value", "type_name"), VALUES, ids=[f"{t}-{i}" for i, (_, t) in enumerate(VALUES)])
def test_a_parameter_reads_back_as_psycopg_binds_it(
    connection: psycopg.Connection[Any], value: Any, type_name: str
) -> None:
    bound = connection.execute(f"SELECT %s::{type_name}", (value,)).fetchone()
    with pipelined_query.transaction(connection, begin=False) as query:
        sent = query.execute(f"SELECT %s::{type_name}", [value])
        query.send()
    assert sent.fetchall() == [bound]


def test_a_text_with_nul_is_refused_not_cut_short() -> None:
    """libpq reads a text parameter up to its first NUL: the rest would be lost without a word."""
    with pytest.raises(ValueError, match="NUL"):
        pipelined_query.parameter("before\x00after")
    with pytest.raises(ValueError, match="NUL"):
        pipelined_query.parameter(["ok", "a\x00b"])


def test_only_statements_with_one_possible_plan_are_prepared() -> None:
    def preparable(sql: str) -> bool:
        return pipelined_query.template_of(sql).preparable

    assert preparable(
        "INSERT INTO t (a, b) VALUES (%(a)s, %(b)s) ON CONFLICT (a) DO UPDATE SET b = excluded.b"
    )
    assert preparable("INSERT INTO t (a) SELECT a FROM json_to_recordset(%(rows)s::json) AS bulk(a text)")
    assert not preparable("SELECT id FROM stripe_events WHERE id = ANY(%s) FOR UPDATE")
    assert not preparable("DELETE FROM t WHERE parent = %(parent_id)s")
    assert not preparable("UPDATE t SET a = %s WHERE id = %s")
    assert not preparable("INSERT INTO t SELECT * FROM u WHERE u.a = %s")
    own = "WITH done AS (INSERT INTO t (a) VALUES (%(a)s) RETURNING 1)"
    assert preparable(f"{own} INSERT INTO e (n) VALUES (CASE WHEN EXISTS (SELECT FROM done) THEN 1 END)")
    assert not preparable(f"{own} INSERT INTO e (n) SELECT n FROM u")
    assert not preparable("WITH done AS (SELECT a FROM t) INSERT INTO e (n) SELECT a FROM done")


def test_a_template_numbers_each_name_once_and_keeps_literal_percent_signs() -> None:
    sql = "SELECT %(a)s, %(b)s, %(a)s, '100%%' WHERE x LIKE 'a%%'"
    template = pipelined_query.template_of(sql)
    assert template.numbered == "SELECT $1, $2, $1, '100%' WHERE x LIKE 'a%'"
    assert template.parameters({"b": "it's", "a": 1}) == [b"1", b"it's"]
    assert template.parameters({"b": None, "a": 2}) == [b"2", None]
    positional = pipelined_query.template_of("UPDATE t SET a = %s WHERE id = %s")
    assert positional.numbered == "UPDATE t SET a = $1 WHERE id = $2"
    assert positional.parameters(["x", 3]) == [b"x", b"3"]
    with pytest.raises(ValueError, match="2 parameters expected"):
        positional.parameters(["x"])
    many = pipelined_query.template_of("SELECT " + ", ".join(["%s"] * 6000))  # (an INSERT of many rows)
    assert len(many.names) == 6000 and many.numbered.endswith("$5999, $6000")


def _fail_in_the_query(query: pipelined_query.PipelinedQuery) -> None:
    query.command("SELECT 1 / 0")  # after the statements PREPAREd for this query


def _fail_to_prepare(query: pipelined_query.PipelinedQuery) -> None:
    query.execute("INSERT INTO pipelined_query_missing (id, n) VALUES (%s, %s)", ["b", 2])  # no such table


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("fail", "error"),
    [(_fail_in_the_query, psycopg.errors.DivisionByZero), (_fail_to_prepare, psycopg.errors.UndefinedTable)],
)
def test_a_failed_query_leaves_the_connection_knowing_its_prepared_statements(
    connection: psycopg.Connection[Any], fail: Any, error: type[Exception]
) -> None:
    """A statement that fails, in the query or while it is PREPAREd: the transaction is rolled back,
    and the statements PREPAREd before it stay known to the connection (PREPAREd again, they would fail
    as duplicates)."""
    connection.execute("CREATE TEMPORARY TABLE pipelined_query_probe (id text PRIMARY KEY, n bigint)")
    insert = "INSERT INTO pipelined_query_probe (id, n) VALUES (%s, %s)"
    with pytest.raises(error), pipelined_query.transaction(connection) as query:
        query.execute(insert, ["a", 1])
        fail(query)
        query.send()
    assert connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert connection.autocommit  # as it was before the transaction
    with pipelined_query.transaction(connection) as query:
        counted = query.execute(insert, ["b", 2])
        query.command("COMMIT")
        query.send()
    assert counted.rowcount == 1
    assert connection.execute("SELECT id FROM pipelined_query_probe").fetchall() == [("b",)]


@pytest.mark.postgres
def test_a_connection_lost_while_preparing_raises_as_lost_and_is_not_used_again(
    connection: psycopg.Connection[Any], pg_session_database: str
) -> None:
    pid = connection.info.backend_pid
    with psycopg.connect(_driver_url(pg_session_database), autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", [pid])
    with pytest.raises(psycopg.OperationalError), pipelined_query.transaction(connection) as query:
        query.execute("INSERT INTO pipelined_query_lost (id) VALUES (%s)", ["a"])
        query.send()
    assert connection.closed or connection.broken  # (a pool throws it away)


@pytest.mark.postgres
def test_a_query_written_without_a_connection_is_sent_by_the_transaction_adopting_it(
    connection: psycopg.Connection[Any],
) -> None:
    connection.execute("CREATE TEMPORARY TABLE pipelined_query_ahead (id text PRIMARY KEY, n bigint)")
    insert = "INSERT INTO pipelined_query_ahead (id, n) VALUES (%s, %s) RETURNING n"
    written = pipelined_query.PipelinedQuery()  # (a replay's planning thread, before any connection)
    answers = [written.execute(insert, [f"r{n}", n]) for n in range(3)]
    with pytest.raises(RuntimeError, match="sent by the one adopting it"):
        written.send()
    with pipelined_query.transaction(connection) as query:
        query.adopt(written)
        query.command("COMMIT")
        query.send()
    assert [answer.fetchall() for answer in answers] == [[(0,)], [(1,)], [(2,)]]
    prepared = {name for (name,) in connection.execute("SELECT name FROM pg_prepared_statements")}
    assert pipelined_query.template_of(insert).name in prepared  # by the connection that sent it


@pytest.mark.postgres
def test_a_receiver_prepares_only_inserts_and_keyed_statements_and_tells_duplicates(
    pg_session_database: str,
) -> None:
    invoice = load_fixture("billing/invoice.created.json")["data"]["object"]
    payment = load_fixture("invoice_payment.paid.json")["data"]["object"]
    events = [
        parse_event(encode(make_event("invoice.created", invoice, created=T0))),
        parse_event(encode(make_event("invoice_payment.paid", payment, created=T0 + 1))),
    ]
    engine = make_engine(pg_session_database)
    try:
        reset(engine)
        store = EventStore(engine)
        first = store.ingest(events)
        again = store.ingest(events[:1])  # the speculative pass meets the stored event and redoes
        pooled = engine.raw_connection()
        try:
            prepared = pooled.driver_connection.execute(  # type: ignore[union-attr]
                "SELECT name, statement FROM pg_prepared_statements WHERE name LIKE 'billing\\_mirror\\_%'"
            ).fetchall()
        finally:
            pooled.close()
    finally:
        engine.dispose()
    assert [result.duplicate for result in first] == [False, False]  # type: ignore[union-attr]
    assert [result.duplicate for result in again] == [True]  # type: ignore[union-attr]
    assert prepared, "the writes were PREPAREd"
    by_name = {template.name: template for template in pipelined_query.templates()}
    for name, kept in prepared:
        assert by_name[name].preparable, by_name[name].numbered[:200]
        statement = by_name[name].numbered
        inserts = re.match(r"(WITH \w+ AS \()?INSERT\b", statement)  # (a lone event's writes count rows)
        assert inserts or by_name[name].keyed, statement[:200]
        # Only its own text: PostgreSQL copies what it keeps with a statement on every EXECUTE.
        assert kept == statement, f"{name} keeps {len(kept)} characters for a statement of {len(statement)}"
    assert any(by_name[name].keyed for name, _ in prepared), "the lines' DELETE and UPDATE"


def _same_value_for_each(template: pipelined_query.Template, value: str) -> Any:
    return [value] * len(template.names) if template.positional else dict.fromkeys(template.names, value)


def _invoice_events(count: int) -> list[Any]:
    """``count`` invoice.paid events of distinct invoices, each with lines of its own."""
    events = []
    for number in range(count):
        invoice = load_fixture("billing/invoice.created.json")["data"]["object"]
        invoice["id"] = f"in_keyed_{number}"
        for line in invoice["lines"]["data"]:
            line["id"] = f"{line['id']}_{number}"
        events.append(parse_event(encode(make_event("invoice.paid", invoice, created=T0 + number))))
    return events


@pytest.mark.postgres
def test_keyed_statements_keep_to_their_indexes_when_planned_on_empty_tables(
    pg_session_database: str,
) -> None:
    """The lines of an invoice are deleted and its items taken off through the invoice's index, by
    statements PREPAREd once per connection. PostgreSQL plans a PREPAREd statement for its values 5
    times, then keeps a generic plan; made while the tables were analyzed empty that plan would
    scan them whole, every event, however large they grow. Planned with sequential scans off, it
    reads the index."""
    engine = make_engine(pg_session_database)
    try:
        reset(engine)
        with engine.connect() as connection:
            connection.exec_driver_sql("ANALYZE invoice_line_items, invoice_item_invoices, invoice_line_sets")
        store = EventStore(engine)
        for event in _invoice_events(8):  # one at a time: 8 transactions, 8 runs of each statement
            assert store.ingest([event])[0].outcome == "applied"  # type: ignore[union-attr]
        pooled = engine.raw_connection()  # the connection every batch used (one at a time)
        try:
            driver: Any = pooled.driver_connection
            prepared = {name for (name,) in driver.execute("SELECT name FROM pg_prepared_statements")}
            keyed = [t for t in pipelined_query.templates() if t.keyed and t.name in prepared]
            explain = psycopg.ClientCursor(driver)  # values written in: EXPLAIN EXECUTE takes no parameters
            plans = {}
            for template in keyed:
                values = template.values(_same_value_for_each(template, "in_keyed_0"))
                marks = ", ".join(["%s"] * len(values))
                explain.execute(f"EXPLAIN EXECUTE {template.name}({marks})", values)
                plans[template.numbered[:60]] = "\n".join(line for (line,) in explain.fetchall())
        finally:
            pooled.close()
    finally:
        engine.dispose()
    assert len(plans) == 2, plans  # the DELETE of superseded lines and the UPDATE of items taken off
    for statement, plan in plans.items():
        assert "Seq Scan" not in plan, f"{statement}\n{plan}"
        assert "Index" in plan, f"{statement}\n{plan}"


@pytest.mark.postgres
def test_an_event_with_one_upsert_is_stored_with_it_in_one_statement(
    pg_session_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One round trip, no BEGIN or COMMIT, and the same outcomes as the two-query path: applied,
    stale for an older snapshot, a duplicate for the same event again."""
    payment = load_fixture("invoice_payment.paid.json")["data"]["object"]
    newer = parse_event(encode(make_event("invoice_payment.paid", payment, created=T0 + 10)))
    older = parse_event(encode(make_event("invoice_payment.paid", payment, created=T0)))
    sent: list[list[pipelined_query.Statement]] = []
    send = pipelined_query.PipelinedQuery.send

    def counting_send(query: pipelined_query.PipelinedQuery) -> None:
        sent.append(list(query._parts))
        send(query)

    monkeypatch.setattr(pipelined_query.PipelinedQuery, "send", counting_send)
    engine = make_engine(pg_session_database)
    try:
        reset(engine)
        store = EventStore(engine)
        applied, stale, again = (store.ingest([event])[0] for event in (newer, older, newer))
        with engine.connect() as connection:
            rows = connection.exec_driver_sql(
                "SELECT id, outcome, attempts, error, processed_at = received_at"
                " FROM stripe_events ORDER BY created"
            ).all()
            version = connection.exec_driver_sql(
                "SELECT last_event_id FROM invoice_payments WHERE id = %s", (payment["id"],)
            ).scalar_one()
    finally:
        engine.dispose()
    assert (applied.outcome, stale.outcome, again.duplicate) == ("applied", "stale", True)  # type: ignore[union-attr]
    assert rows == [(older.id, "stale", 1, None, True), (newer.id, "applied", 1, None, True)]
    assert version == newer.id
    first, second = sent[0], sent[1]
    [(prepared_name, _, _)] = first
    assert prepared_name is not None  # the one statement, PREPAREd and run by name
    assert not any(text in (b"BEGIN", b"COMMIT") for _, text, _ in first + second)


@pytest.mark.postgres
def test_a_query_longer_than_the_sockets_buffers_is_sent_whole(
    connection: psycopg.Connection[Any],
) -> None:
    """A batch's statements can hold megabytes of payloads: the non-blocking connection sends them in
    parts."""
    text = "Żółć 🧾 " * 800_000  # about 12 MB of UTF-8
    with pipelined_query.transaction(connection, begin=False) as query:
        answer = query.execute("SELECT length(%s), md5(%s)", [text, text])
        query.send()
    assert answer.fetchall() == [(len(text), hashlib.md5(text.encode()).hexdigest())]


@pytest.mark.postgres
def test_rows_go_in_statements_of_powers_of_two_each_prepared_once(
    connection: psycopg.Connection[Any],
) -> None:
    """37 rows as 32, 4 and 1: whatever the number of rows of a batch, a connection PREPAREs only a
    few statements (PostgreSQL keeps about 3 KiB of plan per row of each)."""
    connection.execute("CREATE TEMPORARY TABLE pipelined_rows (n bigint PRIMARY KEY, t text)")
    head = "INSERT INTO pipelined_rows (n, t)"
    start = 0
    for count in (37, 36, 33, 1):  # as they were: four statements of four sizes
        with pipelined_query.transaction(connection) as query:
            query.insert_values(head, [(start + n, f"it's row {n}") for n in range(count)])
            query.command("COMMIT")
            query.send()
        start += count
    stored = connection.execute("SELECT n, t FROM pipelined_rows ORDER BY n").fetchall()
    assert [n for n, _ in stored] == list(range(start))
    assert stored[-1] == (start - 1, "it's row 0")
    prepared = connection.execute(
        "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE 'INSERT INTO pipelined\\_rows%'"
    ).fetchone()
    assert prepared == (3,)  # of 32, 4 and 1 rows
