"""Statements compiled once by SQLAlchemy and run on the driver's own connection.

The ingest hot path runs a few statements per event. Through SQLAlchemy's execute each one costs
more Python time than SQLite needs to write the row, so the statements that run per event are
compiled once (same SQL, same bind processors, e.g. JSON and DateTime columns) and executed with the
DBAPI connection underneath the Session: same connection, same transaction, same savepoints.
Driver errors are wrapped the way SQLAlchemy wraps them, so a lost connection or a lock timeout is
still an ``OperationalError`` to the code deciding whether an error belongs to the event or to the
database.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, DateTime, Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

_PINNED = "app.driver_sql.connection"


@contextmanager
def pinned_connection(session: Session) -> Iterator[Connection]:
    """Inside one transaction: let ``session_connection`` answer without asking the Session again
    (its bookkeeping costs more than a row write). Savepoints use the same connection."""
    session.info[_PINNED] = connection = session.connection()
    try:
        yield connection
    finally:
        session.info.pop(_PINNED, None)


def session_connection(session: Session) -> Connection:
    """The connection of the session's transaction (the pinned one while ingest holds it)."""
    pinned = session.info.get(_PINNED)
    return pinned if pinned is not None else session.connection()


def _remember_last(processor: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A batch passes the same timestamp object for every row: convert it once."""
    last: list[Any] = [object(), None]

    def process(value: Any) -> Any:
        if value is not last[0]:
            last[0], last[1] = value, processor(value)
        return last[1]

    return process


def fetch_all(connection: Connection, sql: str, params: Any) -> list[tuple[Any, ...]]:
    """Run a query written for the driver's own parameter style on the driver connection."""
    dialect = connection.dialect
    driver = connection.connection.driver_connection
    try:
        return list(driver.execute(sql, params).fetchall())  # type: ignore[union-attr]
    except dialect.loaded_dbapi.Error as exc:
        raise wrap_driver_error(dialect, sql, exc, driver) from exc


def wrap_driver_error(dialect: Dialect, sql: str, exc: Exception, driver: Any) -> Exception:
    """The SQLAlchemy exception SQLAlchemy itself would raise (OperationalError, IntegrityError...)."""
    return DBAPIError.instance(
        sql,
        None,
        exc,
        dialect.loaded_dbapi.Error,
        connection_invalidated=dialect.is_disconnect(exc, driver, None),  # type: ignore[arg-type]
        dialect=dialect,
    )


class PreparedStatement:
    """``statement`` compiled for ``dialect`` with parameters named ``columns``.

    ``values_clause=True``: an INSERT whose VALUES are exactly ``columns`` (no .values() given);
    otherwise every parameter must be an explicit bindparam named in ``columns``.
    """

    def __init__(
        self, statement: Any, columns: Sequence[str], dialect: Dialect, *, values_clause: bool = True
    ) -> None:
        compiled = statement.compile(dialect=dialect, column_keys=list(columns) if values_clause else None)
        self.sql: str = compiled.string
        self.dialect = dialect
        self.order: tuple[str, ...] | None = tuple(compiled.positiontup) if compiled.positional else None
        unexpected = set(compiled.binds) - set(columns)
        if unexpected:
            raise RuntimeError(f"statement has parameters {sorted(unexpected)} that are not values")
        # Only timestamps repeat within a batch (one `received` per batch): others convert directly.
        self.processors: dict[str, Callable[[Any], Any]] = {}
        for name, bind in compiled.binds.items():
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                repeats = isinstance(bind.type, DateTime)
                self.processors[name] = _remember_last(processor) if repeats else processor
        # Positional (SQLite): (name, processor or None) in parameter order, resolved once.
        self.plan: tuple[tuple[str, Callable[[Any], Any] | None], ...] | None = None
        if self.order is not None:
            self.plan = tuple((name, self.processors.get(name)) for name in self.order)

    def _params(self, values: Mapping[str, Any]) -> Any:
        if self.plan is not None:  # positional (SQLite): one pass in parameter order
            return [values[name] if fn is None else fn(values[name]) for name, fn in self.plan]
        processors = self.processors
        if not processors:
            return values
        return {
            name: processors[name](value) if name in processors else value for name, value in values.items()
        }

    def _wrap(self, exc: Exception, driver: Any) -> Exception:
        return wrap_driver_error(self.dialect, self.sql, exc, driver)

    def execute(self, connection: Connection, values: Mapping[str, Any]) -> int:
        """Run once; return the number of rows the database says it inserted or changed."""
        driver = connection.connection.driver_connection
        try:
            cursor = driver.execute(self.sql, self._params(values))  # type: ignore[union-attr]
        except self.dialect.loaded_dbapi.Error as exc:
            raise self._wrap(exc, driver) from exc
        return int(cursor.rowcount)

    def executemany(self, connection: Connection, rows: Iterable[Mapping[str, Any]]) -> int:
        """Run for every row (one driver call); return the total of rows inserted or changed."""
        driver = connection.connection.driver_connection
        params = [self._params(values) for values in rows]
        if not params:
            return 0
        try:
            cursor = driver.cursor()  # type: ignore[union-attr]
            cursor.executemany(self.sql, params)
        except self.dialect.loaded_dbapi.Error as exc:
            raise self._wrap(exc, driver) from exc
        return int(cursor.rowcount)
