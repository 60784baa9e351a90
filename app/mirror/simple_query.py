"""Statements for PostgreSQL sent as one simple query: a transaction in one or two round trips.

psycopg's pipeline sends each statement with its parameters (extended protocol) and reads each
answer in turn; for the few statements of one webhook's transaction that cost about 0.6 ms of CPU
and 1 ms of wall time, where the same statements as one query string cost 0.1 ms and 0.45 ms
(bench/README.md, issue #15). So here the statements are written out as text: each statement is
PREPAREd once per connection (PostgreSQL parses and plans it once) and run as ``EXECUTE name(literal,
...)``, its values quoted here, and all of them go in one query; the answers come back together and
each statement's row count and rows are read from its own result.

Only the standard library: the writes it runs are plain data (app.mirror.writes); the driver is a
psycopg connection, given a query through its libpq interface (psycopg.pq), its errors and rows
turned into Python by psycopg's own error classes and loaders.
"""

from __future__ import annotations

import itertools
import math
import re
import select
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime
from decimal import Decimal
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
# compiled per shape of row, a few hundred at most) the values are written into the statement itself.
MAX_PREPARED = 2000
# Sent once in a transaction before its first keyed statement: every plan made for one in it, the
# generic plan kept for the connection included, reads through the index (SET LOCAL ends with it).
KEEP_TO_INDEXES = "SET LOCAL enable_seqscan = off"
# Only statements with one possible plan are PREPAREd: inserts of values or of a JSON document's rows
# (upserts go through their conflict index). A statement that scans (the lookup of stored events, a
# DELETE or UPDATE of an invoice's children) gets its values written in and is planned for them: a
# generic plan made while a table was empty kept scanning it whole as it grew (a receiver's
# PostgreSQL CPU per event rose from 0.2 to 6 ms over 50,000 events). An INSERT may come as the
# statement's own WITH queries ("WITH name AS (INSERT ...) ..."), which it may read FROM. The one
# exception: statements registered in KEYED_STATEMENTS (each finds its rows through an index on a
# parameter), PREPAREd too, in transactions that plan with sequential scans off (KEEP_TO_INDEXES).
_INSERT_FIRST = re.compile(r"\s*(?:WITH\s+(\w+)\s+AS\s*\(\s*)?INSERT\b", re.IGNORECASE)
_SOURCE = re.compile(r"\bFROM\s+(\w+)", re.IGNORECASE)


class Template:
    """A statement with placeholders, ready to be PREPAREd and EXECUTEd with quoted values."""

    __slots__ = (
        "keyed",
        "name",
        "names",
        "numbered",
        "occurrences",
        "positional",
        "preparable",
        "text_parts",
    )

    def __init__(self, sql: str, number: int) -> None:
        self.name = f"{_PREFIX}{number}"
        names: list[str] = []  # each parameter once, in $n order (positional: "0", "1", ...)
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
            if name not in names:
                names.append(name)
            occurrences.append(names.index(name))
            text_parts.append("")
        text_parts[-1] += sql[start:]
        if positional and positional != len(occurrences):
            raise ValueError("a statement mixes %s and %(name)s placeholders")
        self.positional = positional > 0
        self.names = tuple(names)
        self.occurrences = tuple(occurrences)
        self.text_parts = tuple(text_parts)
        numbered = [text_parts[0]]
        for index, after in zip(occurrences, text_parts[1:], strict=True):
            numbered.append(f"${index + 1}{after}")
        self.numbered = "".join(numbered)  # the text PREPAREd: placeholders as $1, $2, ...
        self.keyed = sql in KEYED_STATEMENTS
        self.preparable = (self.keyed or _has_one_plan(sql)) and number <= MAX_PREPARED

    def values(self, params: Any) -> list[Any]:
        if self.positional:
            if len(params) != len(self.names):
                raise ValueError(f"{len(self.names)} parameters expected, {len(params)} given")
            return list(params)
        return [params[name] for name in self.names]

    def execute(self, params: Any) -> str:
        if not self.names:
            return f"EXECUTE {self.name}"
        return f"EXECUTE {self.name}({', '.join(map(literal, self.values(params)))})"

    def inline(self, params: Any) -> str:
        """The statement with its values written in (no PREPARE)."""
        values = [literal(value) for value in self.values(params)]
        out = [self.text_parts[0]]
        for index, after in zip(self.occurrences, self.text_parts[1:], strict=True):
            out.append(values[index])
            out.append(after)
        return "".join(out)


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


def literal(value: Any) -> str:
    """``value`` as a PostgreSQL literal (standard_conforming_strings on: only quotes are doubled).
    Text, times and arrays are untyped literals: they take the type of the parameter they fill."""
    kind = value.__class__
    if kind is str:
        text: str = value
        return "'" + text.replace("'", "''") + "'"
    if value is None:
        return "NULL"
    if kind is bool:
        return "true" if value else "false"
    if kind is int:  # a negative number in parentheses: -(2**63) followed by a cast would overflow
        return str(value) if value >= 0 else f"({value})"
    if kind is float:
        if not math.isfinite(value):
            return f"'{value!r}'"
        return repr(value) if value >= 0 else f"({value!r})"
    if isinstance(value, datetime | date):
        return f"'{value.isoformat()}'"
    if isinstance(value, bytes | bytearray | memoryview):
        return f"'\\x{bytes(value).hex()}'"
    if isinstance(value, list | tuple):
        return literal("{" + ",".join(map(_array_element, value)) + "}")
    if isinstance(value, Decimal):
        return f"({value})" if value.is_finite() else f"'{value}'"
    if isinstance(value, int):  # an int subclass (an enum)
        return literal(int(value))
    if isinstance(value, str):
        return literal(str(value))
    if hasattr(value, "obj"):  # psycopg's Json wrapper: as the text it sends (as in upsert's bulk form)
        # Imported here: PostgreSQL only, never in the SQLite writer child (standard library only).
        from app.json_text import driver_json_text

        return literal(driver_json_text(value))
    raise TypeError(f"no PostgreSQL literal for {kind.__name__}")


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
    """A cursor of a SimpleQuery: its statements are sent with the query; afterwards ``rowcount``
    adds up theirs (as executemany does) and ``fetchall`` returns their rows."""

    __slots__ = ("_query", "_results")

    def __init__(self, query: SimpleQuery) -> None:
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
    """Whether ``driver`` is a psycopg connection on which literals can be written as quoted here."""
    pgconn = getattr(driver, "pgconn", None)
    if pgconn is None:
        return False
    return bool(
        pgconn.parameter_status(b"standard_conforming_strings") == b"on"
        and pgconn.parameter_status(b"client_encoding") == b"UTF8"
    )


def run_query(driver: Any, text: str) -> list[Any]:
    """Send ``text`` as one simple query on ``driver`` (a psycopg connection) and return every
    statement's result (psycopg.pq.PGresult), raising psycopg's error for a failed statement.

    Through psycopg's libpq interface (psycopg.pq) instead of a cursor: a cursor's execute, nextset
    and fetchall cost 110-140 µs of CPU for a transaction of eight statements, this 50 (bench/README.md,
    fourth session); nothing here needs what a cursor adds (parameters, row factories, scrolling)."""
    pgconn = driver.pgconn
    pgconn.send_query(text.encode())
    waiting = _sent(pgconn)
    answers: list[Any] = []
    while (answer := _next_result(pgconn, waiting)) is not None:
        answers.append(answer)
    _raise_first_failure(driver, answers)
    return answers


def prepare_each(driver: Any, templates: Sequence[Template]) -> None:
    """PREPARE each template on ``driver`` by the protocol's own Parse message, all in one round trip
    (libpq's pipeline mode), before the query that EXECUTEs them.

    Not as PREPARE statements in that query: PostgreSQL keeps with a statement PREPAREd there the
    whole query string it came in, payloads and all, and copies it on every EXECUTE (a replay's first
    batch is megabytes: 55 % of PostgreSQL's CPU went to that copy, bench/README.md, fifth session)."""
    pgconn = driver.pgconn
    pgconn.enter_pipeline_mode()
    answers: list[Any] = []
    try:
        for template in templates:
            pgconn.send_prepare(template.name.encode(), template.numbered.encode())
        pgconn.pipeline_sync()
        waiting = _sent(pgconn)
        while True:
            answer = _next_result(pgconn, waiting)
            if answer is None:  # the end of one Parse's answers
                continue
            if answer.status == _PIPELINE_SYNC:
                break
            answers.append(answer)
    except BaseException:
        try:
            pgconn.exit_pipeline_mode()
        except Exception:  # answers still owed (the connection was lost): it cannot be used again
            driver.close()
        raise
    pgconn.exit_pipeline_mode()
    _raise_first_failure(driver, answers)


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


def _row_loader(driver: Any) -> Any:
    """What turns a result's rows (text) into Python values, as the connection's cursors do."""
    from psycopg.adapt import Transformer

    return Transformer(driver)


class SimpleQuery:
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
        self._parts: list[str] = []
        self._results: list[Result | None] = []  # one per part, None for BEGIN and the like
        self._executed: dict[str, Template] = {}  # the statements EXECUTEd by the parts, by name

    def cursor(self) -> DeferredCursor:
        return DeferredCursor(self)

    def execute(self, sql: str, params: Any = None) -> DeferredCursor:
        return self.cursor().execute(sql, params)

    def command(self, text: str) -> None:
        """A statement whose answer nobody reads (BEGIN, COMMIT)."""
        self._parts.append(text)
        self._results.append(None)

    def add(self, sql: str, params: Any) -> Result:
        result = Result()
        if params is None:
            self._parts.append(sql)
        else:
            template = template_of(sql)
            prepared = self._prepared(template)
            self._parts.append(template.execute(params) if prepared else template.inline(params))
        self._results.append(result)
        return result

    def adopt(self, written: SimpleQuery) -> None:
        """Take the statements of ``written`` (a query written without a connection, in a transaction
        as this one is) after those added so far; their Results are filled in by this query's send."""
        if written.in_block != self.in_block:
            raise ValueError("a query written for another kind of transaction")
        self._parts.extend(written._parts)
        self._results.extend(written._results)
        self._executed.update(written._executed)
        self._kept_to_indexes = self._kept_to_indexes or written._kept_to_indexes
        written._parts, written._results, written._executed = [], [], {}

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
        """Send what was added as one query and read every statement's answer."""
        if not self._parts:
            return
        if self.driver is None:
            raise RuntimeError("a query written without a connection is sent by the one adopting it")
        text = ";\n".join(self._parts)
        results = self._results
        preparing = [template for name, template in self._executed.items() if name not in self._known]
        self._parts, self._results, self._executed = [], [], {}
        if preparing:
            try:
                prepare_each(self.driver, preparing)
            except BaseException:
                self._forget_prepared = True  # those before the failing one stay: ask which
                raise
            self._known.update(template.name for template in preparing)
        answers = run_query(self.driver, text)
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
def transaction(driver: Any, *, begin: bool = True) -> Iterator[SimpleQuery]:
    """A transaction of SimpleQuery sends on ``driver`` (a psycopg connection not in a transaction):
    BEGIN goes with the first statements, the caller ends with ``command("COMMIT")`` in its last
    send; if anything raises before, the transaction is rolled back here. The connection is in
    autocommit mode meanwhile, so that psycopg does not send a BEGIN of its own first. Without
    ``begin``, the one statement sent is its own transaction (PostgreSQL's implicit one)."""
    was_autocommit = driver.autocommit
    driver.autocommit = True
    query = SimpleQuery(driver, in_block=begin)
    if begin:
        query.command("BEGIN")
    try:
        yield query
    except BaseException:
        if not driver.closed and not driver.broken:
            query.recover()
        raise
    finally:
        if not driver.closed:
            driver.autocommit = was_autocommit
