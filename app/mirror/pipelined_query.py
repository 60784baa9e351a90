"""Statements for PostgreSQL sent together in libpq's pipeline mode: a transaction in one or two
round trips.

psycopg's own pipeline (its cursors, one at a time) cost about 0.6 ms of CPU and 1 ms of wall time
for the few statements of one webhook's transaction (bench/README.md, issue #15). Here they are
collected (``PipelinedQuery.add``), then sent at once through psycopg's libpq interface
(psycopg.pq) with one Sync: each insert statement PREPAREd once per connection (PostgreSQL parses
and plans it once) and run by name, any other as the unnamed statement, planned for its values;
the values always as parameters in PostgreSQL's text format, never written into the statement (its
SQL lexer spent a fifth of its CPU reading literals back out, sixth session). The answers come back
together and each statement's row count and rows are read from its own result.

Only the standard library: the writes it runs are plain data (app.mirror.writes); the driver is a
psycopg connection, its errors and rows turned into Python by psycopg's own error classes and
loaders.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import select
import threading
import weakref
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

from app.mirror.writes import KEYED_STATEMENTS

# %(name)s, %s, or a literal %% in psycopg's "format" and "pyformat" parameter styles.
_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%s|%%")
_PREFIX = "billing_mirror_"
_IDLE = 0  # libpq's PQTRANS_IDLE: no transaction open on the connection
_TUPLES_OK = 2  # libpq's PGRES_TUPLES_OK: a statement that returned rows
_FATAL_ERROR = 7  # libpq's PGRES_FATAL_ERROR: the statement failed (and the rest did not run)
_PIPELINE_SYNC = 10  # libpq's PGRES_PIPELINE_SYNC: the end of a pipeline's answers
# Statements PREPAREd at most (the first made in the process); past it (it never is: statements are
# compiled per shape of row, a few hundred at most) a statement goes as the unnamed one, planned each time.
MAX_PREPARED = 2000
# Sent once in a transaction before its first keyed statement: every plan made for one in it, the
# generic plan kept for the connection included, reads through the index (SET LOCAL ends with it).
KEEP_TO_INDEXES = "SET LOCAL enable_seqscan = off"
# Only statements with one possible plan are PREPAREd: inserts of values or of a JSON document's rows
# (upserts go through their conflict index). A statement that scans (the lookup of stored events, a
# DELETE or UPDATE of an invoice's children) goes as the unnamed statement, planned for its values: a
# generic plan made while a table was empty kept scanning it whole as it grew (a receiver's
# PostgreSQL CPU per event rose from 0.2 to 6 ms over 50,000 events). An INSERT may come as the
# statement's own WITH queries ("WITH name AS (INSERT ...) ..."), which it may read FROM. The one
# exception: statements registered in KEYED_STATEMENTS (each finds its rows through an index on a
# parameter), PREPAREd too, in transactions that plan with sequential scans off (KEEP_TO_INDEXES).
_INSERT_FIRST = re.compile(r"\s*(?:WITH\s+(\w+)\s+AS\s*\(\s*)?INSERT\b", re.IGNORECASE)
_SOURCE = re.compile(r"\bFROM\s+(\w+)", re.IGNORECASE)


class Template:
    """A statement with placeholders, numbered ($1, $2, ...) to be PREPAREd or sent with its values
    as parameters."""

    __slots__ = (
        "keyed",
        "name",
        "name_bytes",
        "names",
        "numbered",
        "numbered_bytes",
        "positional",
        "preparable",
    )

    def __init__(self, sql: str, number: int) -> None:
        self.name = f"{_PREFIX}{number}"
        names: dict[str, int] = {}  # each parameter once, in $n order (positional: "0", "1", ...)
        occurrences: list[int] = []  # which parameter each placeholder is, in order
        text_parts = [""]  # the SQL between placeholders (%% already made %)
        start = 0
        positional = 0
        for match in _PLACEHOLDER.finditer(sql):
            text_parts[-1] += sql[start : match.start()]
            start = match.end()
            if match[0] == "%%":
                text_parts[-1] += "%"
                continue
            if match[1] is None:
                name = str(positional)
                positional += 1
            else:
                name = match[1]
            occurrences.append(names.setdefault(name, len(names)))
            text_parts.append("")
        text_parts[-1] += sql[start:]
        if positional and positional != len(occurrences):
            raise ValueError("a statement mixes %s and %(name)s placeholders")
        self.positional = positional > 0
        self.names = tuple(names)
        numbered = [text_parts[0]]
        for index, after in zip(occurrences, text_parts[1:], strict=True):
            numbered.append(f"${index + 1}{after}")
        self.numbered = "".join(numbered)  # the text PREPAREd: placeholders as $1, $2, ...
        self.numbered_bytes = self.numbered.encode()
        self.name_bytes = self.name.encode()
        self.keyed = sql in KEYED_STATEMENTS
        self.preparable = (self.keyed or _has_one_plan(sql)) and number <= MAX_PREPARED

    def values(self, params: Any) -> list[Any]:
        if self.positional:
            if len(params) != len(self.names):
                raise ValueError(f"{len(self.names)} parameters expected, {len(params)} given")
            return list(params)
        return [params[name] for name in self.names]

    def parameters(self, params: Any) -> list[bytes | None]:
        """The values of ``params`` as the statement's $1, $2, ... in PostgreSQL's text format."""
        return parameters_of(self.values(params))


def _has_one_plan(sql: str) -> bool:
    """An INSERT that reads no table: only a JSON document's rows or its own WITH query."""
    insert = _INSERT_FIRST.match(sql)
    if insert is None:
        return False
    own = {"json_to_recordset", *(name for name in insert.groups() if name)}
    return all(source in own for source in _SOURCE.findall(sql))


_templates: dict[str, Template] = {}
_numbers = itertools.count(1)
_templates_lock = threading.Lock()


def templates() -> list[Template]:
    """Every statement made into a Template in this process so far."""
    return list(_templates.values())


def template_of(sql: str) -> Template:
    found = _templates.get(sql)
    if found is None:
        with _templates_lock:
            found = _templates.get(sql)
            if found is None:
                found = _templates[sql] = Template(sql, next(_numbers))
    return found


def parameter(value: Any) -> bytes | None:
    """``value`` in PostgreSQL's text format, as a parameter of a statement (None for NULL). Untyped:
    each takes the type of the parameter it fills."""
    kind = value.__class__
    if kind is str:
        text: str = value
    elif value is None:
        return None
    elif kind is bool:
        return b"t" if value else b"f"
    elif kind is int:
        return str(value).encode()
    elif kind is float:
        return repr(value).encode()  # inf, -inf and nan are PostgreSQL's spellings too
    elif isinstance(value, datetime | date):
        return value.isoformat().encode()
    elif isinstance(value, bytes | bytearray | memoryview):
        return b"\\x" + bytes(value).hex().encode()
    elif isinstance(value, list | tuple):
        text = "{" + ",".join(map(_array_element, value)) + "}"
    elif isinstance(value, Decimal):
        return str(value).encode()
    elif isinstance(value, int):  # an int subclass (an enum)
        return str(int(value)).encode()
    elif isinstance(value, str):
        text = str(value)
    elif hasattr(value, "obj"):  # psycopg's Json wrapper: as the text it sends (as in upsert's bulk form)
        # Imported here: PostgreSQL only, never in the SQLite writer child (standard library only).
        from app.json_text import driver_json_text

        text = driver_json_text(value)
    else:
        raise TypeError(f"no PostgreSQL parameter for {kind.__name__}")
    if "\x00" in text:  # libpq reads a text parameter up to its first NUL: refused, never cut short
        raise ValueError("a PostgreSQL text value cannot contain NUL (0x00)")
    return text.encode()


def parameters_of(values: Iterable[Any]) -> list[bytes | None]:
    """``parameter`` of each value; text, most of them, without a call each (32 stripe_events rows:
    132 against 216 µs, bench/README.md, eighth session)."""
    return [
        value.encode() if value.__class__ is str and "\x00" not in value else parameter(value)
        for value in values
    ]


@lru_cache(maxsize=256)
def _values_sql(head: str, width: int, rows: int) -> str:
    row = "(" + ", ".join(["%s"] * width) + ")"
    return f"{head} VALUES {', '.join([row] * rows)}"


def _array_element(value: Any) -> str:
    if value is None:
        return "NULL"
    text = value if value.__class__ is str else str(value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Result:
    """What one statement of a sent query gave: rows changed (or returned) and its rows."""

    __slots__ = ("rowcount", "rows")

    def __init__(self) -> None:
        self.rowcount = 0
        self.rows: list[Any] = []


class DeferredCursor:
    """A cursor of a PipelinedQuery: its statements are sent with the query; afterwards ``rowcount``
    adds up theirs (as executemany does) and ``fetchall`` returns their rows."""

    __slots__ = ("_query", "_results")

    def __init__(self, query: PipelinedQuery) -> None:
        self._query = query
        self._results: list[Result] = []

    def execute(self, sql: str, params: Any = None) -> DeferredCursor:
        self._results.append(self._query.add(sql, params))
        return self

    def executemany(self, sql: str, params_seq: Sequence[Any]) -> None:
        for params in params_seq:
            self.execute(sql, params)

    @property
    def rowcount(self) -> int:
        return sum(result.rowcount for result in self._results)

    def fetchall(self) -> list[Any]:
        return [row for result in self._results for row in result.rows]

    def close(self) -> None:
        self._results = []


# Per connection: the names of the statements PREPAREd on it.
_prepared: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()


def usable(driver: Any) -> bool:
    """Whether ``driver`` is a psycopg connection that reads parameters as written here (UTF-8) and
    the statements' own quoted constants as standard SQL."""
    pgconn = getattr(driver, "pgconn", None)
    if pgconn is None:
        return False
    return bool(
        pgconn.parameter_status(b"standard_conforming_strings") == b"on"
        and pgconn.parameter_status(b"client_encoding") == b"UTF8"
    )


# One statement of a query: a PREPAREd one's name, or a statement's own text; its parameters or None.
Statement = tuple[bytes | None, bytes | None, list[bytes | None] | None]
MAX_PARAMETERS = 65_535  # in one statement, PostgreSQL's limit
MAX_VALUES_ROWS = 512  # in one INSERT of insert_values


def run_pipeline(driver: Any, preparing: Sequence[Template], statements: Sequence[Statement]) -> list[Any]:
    """PREPARE ``preparing`` and run ``statements`` on ``driver`` (a psycopg connection) in one round
    trip, in libpq's pipeline mode; return every statement's result (psycopg.pq.PGresult), raising
    psycopg's error for the first that failed (those after it did not run).

    Each PREPARE is the protocol's own Parse message, not a PREPARE statement: PostgreSQL keeps with a
    statement PREPAREd by SQL the whole query string it came in, and copied it on every EXECUTE (55 %
    of its CPU in a replay, bench/README.md, fifth session). Values go as parameters, never written
    into the text: PostgreSQL's SQL lexer spent a fifth of its CPU reading them back out of literals
    (sixth session). Through psycopg's libpq interface (psycopg.pq) instead of a cursor: a cursor's
    execute, nextset and fetchall cost twice the CPU for a transaction of eight statements (fourth
    session); nothing here needs what a cursor adds."""
    pgconn = driver.pgconn
    pgconn.enter_pipeline_mode()
    answers: list[Any] = []
    try:
        _queue_statements(pgconn, preparing, statements)
        waiting = _sent(pgconn)
        while True:
            answer = _next_result(pgconn, waiting)
            if answer is None:  # the end of one statement's answers
                continue
            if answer.status == _PIPELINE_SYNC:
                break
            answers.append(answer)
    except BaseException:
        _abandon_pipeline(driver)
        raise
    return _pipeline_answers(driver, len(preparing), answers)


async def run_pipeline_on_loop(
    driver: Any, preparing: Sequence[Template], statements: Sequence[Statement]
) -> list[Any]:
    """``run_pipeline`` from the running event loop: its answers are awaited, not waited for, so the
    loop serves other requests meanwhile (a lone delivery, app.ingest.store)."""
    pgconn = driver.pgconn
    # libpq keeps what the socket cannot take yet, sent as it becomes writable, instead of blocking
    # the loop in a send until PostgreSQL has read a batch of hundreds of kilobytes.
    pgconn.nonblocking = 1
    try:
        return await _pipeline_on_loop(driver, preparing, statements)
    finally:
        if not driver.closed:
            pgconn.nonblocking = 0


async def _pipeline_on_loop(
    driver: Any, preparing: Sequence[Template], statements: Sequence[Statement]
) -> list[Any]:
    loop = asyncio.get_running_loop()
    pgconn = driver.pgconn
    socket = pgconn.socket
    pgconn.enter_pipeline_mode()
    answers: list[Any] = []
    ready: asyncio.Future[None] | None = None

    def wake() -> None:
        if ready is not None and not ready.done():
            ready.set_result(None)

    try:
        _queue_statements(pgconn, preparing, statements)
        while pgconn.flush():  # (a long query goes in several writes)
            ready = loop.create_future()
            loop.add_writer(socket, wake)
            try:
                await ready
            finally:
                loop.remove_writer(socket)
            pgconn.consume_input()
        loop.add_reader(socket, wake)
        try:
            while True:
                while pgconn.is_busy():
                    ready = loop.create_future()
                    await ready
                    pgconn.consume_input()
                answer = pgconn.get_result()
                if answer is None:
                    continue
                if answer.status == _PIPELINE_SYNC:
                    break
                answers.append(answer)
        finally:
            loop.remove_reader(socket)
    except BaseException:
        _abandon_pipeline(driver)
        raise
    return _pipeline_answers(driver, len(preparing), answers)


def _queue_statements(pgconn: Any, preparing: Sequence[Template], statements: Sequence[Statement]) -> None:
    """Queue the PREPAREs, the statements and the Sync of a pipeline (sent as libpq flushes them)."""
    for template in preparing:
        pgconn.send_prepare(template.name_bytes, template.numbered_bytes)
    for name, text, params in statements:
        if name is not None:
            pgconn.send_query_prepared(name, params)
        else:
            pgconn.send_query_params(text, params)
    pgconn.pipeline_sync()


def _abandon_pipeline(driver: Any) -> None:
    """After a pipeline failed on the way: leave pipeline mode, or close a connection that cannot."""
    try:
        driver.pgconn.exit_pipeline_mode()
    except Exception:  # answers still owed (the connection was lost): it cannot be used again
        driver.close()


def _pipeline_answers(driver: Any, prepared: int, answers: list[Any]) -> list[Any]:
    """The statements' answers once the Sync came back (the PREPAREs' left out), or the first failure."""
    driver.pgconn.exit_pipeline_mode()
    _raise_first_failure(driver, answers)
    return answers[prepared:]


def _sent(pgconn: Any) -> select.poll:
    """Wait until what was queued on the non-blocking ``pgconn`` is sent (a long query goes in several
    writes); return the poll object that then waits for its answers."""
    waiting = select.poll()  # not select.select: a busy server's descriptors pass FD_SETSIZE
    waiting.register(pgconn.socket, select.POLLIN | select.POLLOUT)
    while pgconn.flush():
        waiting.poll()
        pgconn.consume_input()
    waiting.modify(pgconn.socket, select.POLLIN)
    return waiting


def _next_result(pgconn: Any, waiting: select.poll) -> Any:
    while pgconn.is_busy():
        waiting.poll()
        pgconn.consume_input()
    return pgconn.get_result()


def _raise_first_failure(driver: Any, answers: Sequence[Any]) -> None:
    for answer in answers:
        if answer.status == _FATAL_ERROR:
            from psycopg import errors  # PostgreSQL only: the SQLite writer child never sends a query

            raise errors.error_from_result(answer, encoding=driver.info.encoding)


# Per connection: what turns its results' rows into Python values, made once, not per query (as a
# psycopg cursor keeps its own).
_loaders: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _row_loader(driver: Any) -> Any:
    """What turns a result's rows (text) into Python values, as the connection's cursors do."""
    loader = _loaders.get(driver)
    if loader is None:
        from psycopg.adapt import Transformer

        loader = _loaders[driver] = Transformer(driver)
    return loader


class PipelinedQuery:
    """Statements collected, then sent in one query by ``send``; each ``add`` returns the Result
    that ``send`` fills in. Used inside ``transaction``, which owns BEGIN, COMMIT and ROLLBACK.

    Without a ``driver`` the query is only written (a replay's next batch, by the thread that plans
    it), then taken into a transaction's query by ``adopt``: its text does not depend on the
    connection, which PREPAREs what it lacks when the query is sent."""

    def __init__(self, driver: Any = None, *, in_block: bool = True) -> None:
        self.driver = driver
        self.in_block = in_block  # inside BEGIN ... COMMIT (SET LOCAL holds to the end of it)
        self._kept_to_indexes = False
        self._known: set[str] = set()
        if driver is not None:
            with _templates_lock:
                self._known = _prepared.setdefault(driver, set())
        self._forget_prepared = False
        self._parts: list[Statement] = []
        self._results: list[Result | None] = []  # one per part, None for BEGIN and the like
        self._executed: dict[str, Template] = {}  # the PREPAREd statements the parts run, by name

    def cursor(self) -> DeferredCursor:
        return DeferredCursor(self)

    def execute(self, sql: str, params: Any = None) -> DeferredCursor:
        return self.cursor().execute(sql, params)

    def command(self, text: str) -> None:
        """A statement without parameters whose answer nobody reads (BEGIN, COMMIT)."""
        self._parts.append((None, text.encode(), None))
        self._results.append(None)

    def add(self, sql: str, params: Any) -> Result:
        result = Result()
        self._add_statement(sql, params)
        self._results.append(result)
        return result

    def add_unread(self, sql: str, params: Any) -> None:
        """``add`` for a statement whose answer nobody reads: its rows are not even loaded."""
        self._add_statement(sql, params)
        self._results.append(None)

    def _add_statement(self, sql: str, params: Any) -> None:
        if params is None:
            self._parts.append((None, sql.encode(), None))
        else:
            template = template_of(sql)
            self._parts.append(self._statement(template, template.parameters(params)))

    def insert_values(self, head: str, rows: Sequence[Sequence[Any]]) -> None:
        """``head`` (``INSERT INTO t (a, b)``) with ``VALUES`` for each of ``rows``; nobody reads
        their answer. In statements of a power of two rows each (37 rows: 32, 4 and 1), so that a
        connection PREPAREs a few statements, each parsed and planned once, whatever the number of
        rows (PostgreSQL keeps about 3 KiB of plan per row of such a statement)."""
        if not rows:
            return
        width = len(rows[0])
        largest = 1 << min(MAX_VALUES_ROWS, MAX_PARAMETERS // width).bit_length() - 1
        start = 0
        while start < len(rows):
            count = min(largest, 1 << (len(rows) - start).bit_length() - 1)
            chunk = rows[start : start + count]
            start += count
            values = parameters_of(itertools.chain.from_iterable(chunk))
            self._parts.append(self._statement(template_of(_values_sql(head, width, count)), values))
            self._results.append(None)

    def adopt(self, written: PipelinedQuery) -> None:
        """Take the statements of ``written`` (a query written without a connection, in a transaction
        as this one is) after those added so far; their Results are filled in by this query's send."""
        if written.in_block != self.in_block:
            raise ValueError("a query written for another kind of transaction")
        self._parts.extend(written._parts)
        self._results.extend(written._results)
        self._executed.update(written._executed)
        self._kept_to_indexes = self._kept_to_indexes or written._kept_to_indexes
        written._parts, written._results, written._executed = [], [], {}

    def _statement(self, template: Template, values: list[bytes | None]) -> Statement:
        """``template`` with ``values``: run by name when PREPAREd, else as the unnamed statement,
        planned for these values."""
        if self._prepared(template):
            return (template.name_bytes, None, values)
        return (None, template.numbered_bytes, values)

    def _prepared(self, template: Template) -> bool:
        """Whether ``template`` runs PREPAREd (it is, or will be when the query is sent)."""
        if template.keyed:
            if not self.in_block:
                return False
            if not self._kept_to_indexes:
                self.command(KEEP_TO_INDEXES)
                self._kept_to_indexes = True
        if not template.preparable:
            return False
        self._executed[template.name] = template
        return True

    def send(self) -> None:
        """Send what was added in one round trip and read every statement's answer."""
        if not self._parts:
            return
        preparing, parts, results = self._take_parts()
        try:
            answers = run_pipeline(self.driver, preparing, parts)
        except BaseException:
            self._failed(preparing)
            raise
        self._read(preparing, answers, results)

    async def send_on_loop(self) -> None:
        """``send``, its answers awaited on the running event loop (run_pipeline_on_loop)."""
        if not self._parts:
            return
        preparing, parts, results = self._take_parts()
        try:
            answers = await run_pipeline_on_loop(self.driver, preparing, parts)
        except BaseException:
            self._failed(preparing)
            raise
        self._read(preparing, answers, results)

    def _take_parts(self) -> tuple[list[Template], list[Statement], list[Result | None]]:
        """What the next send sends (the PREPAREs this connection lacks first), taken from the query."""
        if self.driver is None:
            raise RuntimeError("a query written without a connection is sent by the one adopting it")
        parts, results = self._parts, self._results
        preparing = [template for name, template in self._executed.items() if name not in self._known]
        self._parts, self._results, self._executed = [], [], {}
        return preparing, parts, results

    def _failed(self, preparing: list[Template]) -> None:
        if preparing:
            self._forget_prepared = True  # those before a failure stay: ask which

    def _read(self, preparing: list[Template], answers: list[Any], results: list[Result | None]) -> None:
        """Each statement's row count and rows, from its answer."""
        self._known.update(template.name for template in preparing)
        if len(answers) != len(results):
            raise RuntimeError("PostgreSQL gave fewer answers than the query had statements")
        loader = None
        for answer, result in zip(answers, results, strict=True):
            if result is None:
                continue
            if answer.status == _TUPLES_OK:
                if loader is None:
                    loader = _row_loader(self.driver)
                loader.set_pgresult(answer)
                result.rows = loader.load_rows(0, answer.ntuples, tuple)
                result.rowcount = len(result.rows)
            else:
                result.rowcount = answer.command_tuples or 0

    def recover(self) -> None:
        """After a failed query: roll back, and learn again which statements are PREPAREd."""
        cursor = self.driver.cursor()
        if self._forget_prepared:
            cursor.execute(
                "ROLLBACK; SELECT name FROM pg_prepared_statements WHERE name LIKE 'billing\\_mirror\\_%'"
            )
            cursor.nextset()
            self._known.clear()
            self._known.update(name for (name,) in cursor.fetchall())
            self._forget_prepared = False
        elif self.driver.pgconn.transaction_status != _IDLE:
            cursor.execute("ROLLBACK")
        cursor.close()


@contextmanager
def transaction(driver: Any, *, begin: bool = True) -> Iterator[PipelinedQuery]:
    """A transaction of PipelinedQuery sends on ``driver`` (a psycopg connection not in a transaction):
    BEGIN goes with the first statements, the caller ends with ``command("COMMIT")`` in its last
    send; if anything raises before, the transaction is rolled back here (``sending``). Without
    ``begin``, the one statement sent is its own transaction (PostgreSQL's implicit one)."""
    query = PipelinedQuery(driver, in_block=begin)
    if begin:
        query.command("BEGIN")
    with sending(query):
        yield query


@contextmanager
def sending(query: PipelinedQuery) -> Iterator[None]:
    """Meanwhile ``query``'s connection is in autocommit mode, so that psycopg does not send a BEGIN of
    its own first; if anything raises, what the query began is rolled back."""
    driver = query.driver
    was_autocommit = driver.autocommit
    driver.autocommit = True
    try:
        yield
    except BaseException:
        if not driver.closed and not driver.broken:
            query.recover()
        raise
    finally:
        if not driver.closed:
            driver.autocommit = was_autocommit
