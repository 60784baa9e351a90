"""Statements compiled once by SQLAlchemy, whose parameters are converted for the driver itself.

The ingest hot path runs a few statements per event. Through SQLAlchemy's execute each one costs
more Python time than SQLite needs to write the row, so the statements that run per event are
compiled once (same SQL, same bind processors, e.g. JSON and DateTime columns) and their parameters
converted up front; they are executed later on the DBAPI connection underneath the transaction
(app.writes, app.apply).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from operator import itemgetter
from typing import Any

from sqlalchemy import Dialect
from sqlalchemy.orm import Session


def driver_connection(session: Session) -> Any:
    """The DBAPI connection of the session's transaction (same transaction, same savepoints)."""
    return session.connection().connection.driver_connection


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
        order: tuple[str, ...] | None = tuple(compiled.positiontup) if compiled.positional else None
        unexpected = set(compiled.binds) - set(columns)
        if unexpected:
            raise RuntimeError(f"statement has parameters {sorted(unexpected)} that are not values")
        self.processors: dict[str, Callable[[Any], Any]] = {}
        for name, bind in compiled.binds.items():
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                self.processors[name] = processor
        # Positional (SQLite): the values are picked in parameter order by one C call, then the
        # few that need it (JSON, booleans) are converted in place.
        self.positional = order is not None
        if order is not None:
            self._pick = itemgetter(*order) if len(order) > 1 else lambda values: (values[order[0]],)
            self._convert = tuple(
                (index, self.processors[name]) for index, name in enumerate(order) if name in self.processors
            )

    def params(self, values: Mapping[str, Any]) -> Any:
        """``values`` as the driver takes them: converted, and in parameter order when positional."""
        if self.positional:
            row = list(self._pick(values))
            for index, convert in self._convert:
                row[index] = convert(row[index])
            return row
        processors = self.processors
        if not processors:
            return values
        return {
            name: processors[name](value) if name in processors else value for name, value in values.items()
        }
