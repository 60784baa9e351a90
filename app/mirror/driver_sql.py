"""Statements compiled once by SQLAlchemy, whose parameters are converted for the driver itself.

The ingest hot path runs a few statements per event. Through SQLAlchemy's execute each one costs
more Python time than SQLite needs to write the row, so the statements that run per event are
compiled once (same SQL, same bind processors, e.g. JSON and DateTime columns) and their parameters
converted up front; they are executed later on the DBAPI connection underneath the transaction
(app.mirror.writes, app.ingest.apply).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from operator import itemgetter
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Dialect, Integer, String, TypeDecorator
from sqlalchemy.orm import Session

from app.mirror.envelope import INT64

Convert = Callable[[Any], Any]


def driver_connection(session: Session) -> Any:
    """The DBAPI connection of the session's transaction (same transaction, same savepoints)."""
    return session.connection().connection.driver_connection


class _Precomputed(dict[Any, Any]):
    """A bind processor's results for a few values, looked up in C; any other value goes through
    the processor itself, so it gets the same result or raises the same error."""

    def __init__(self, processor: Convert, common: Sequence[Any]) -> None:
        super().__init__((value, processor(value)) for value in common)
        self.processor = processor

    def __missing__(self, value: Any) -> Any:
        return self.processor(value)


def _plain_serializer(impl: Any, dialect: Dialect) -> Convert | None:
    """The dialect's json_serializer when ``impl``'s processor is SQLAlchemy's own and does nothing
    else to a dict or a list (no string processor, as on SQLite); None otherwise (e.g. psycopg's)."""
    if type(impl).bind_processor is not JSON.bind_processor or impl._str_impl.bind_processor(dialect):
        return None
    # What JSON.bind_processor serialises with (create_engine's json_serializer, app.db.engine sets it).
    # getattr: a private attribute that not every SQLAlchemy release declares on Dialect (2.1 does).
    serializer: Convert | None = getattr(dialect, "_json_serializer", None)
    return serializer or json.dumps


def _json_converter(impl: Any, processor: Convert, dialect: Dialect) -> Convert:
    # Most JSON columns hold null or an empty list or dict: their results are computed once (a
    # string, or on psycopg a Json wrapper, which the driver only reads).
    null, empty_list, empty_dict = processor(None), processor([]), processor({})
    serialize = _plain_serializer(impl, dialect) or processor

    def convert(value: Any) -> Any:
        kind = value.__class__
        if kind is dict:
            return serialize(value) if value else empty_dict
        if kind is list:
            return serialize(value) if value else empty_list
        return null if value is None else processor(value)

    return convert


class UnstorableValue(ValueError):
    """A value its column cannot hold (text in an integer column, an integer past the column's range):
    refused while the event is planned, so SQLite (which would store it) and PostgreSQL (which would
    fail the statement) end the same: the event is stored as failed, with this message."""


INT32 = range(-(2**31), 2**31)
# Stripe's ids are at most 255 characters; an indexed PostgreSQL value past about 2.7 KB fails.
MAX_INDEXED_TEXT = 255


def _indexed_columns(table: Any) -> frozenset[str]:
    if table is None:
        return frozenset()
    keys = {column.name for column in table.primary_key.columns}
    return frozenset(keys | {column.name for index in table.indexes for column in index.columns})


def _value_check(impl: Any, column: str, indexed: bool) -> Convert | None:
    """The check of one column's values, or None for a type that needs none (JSON holds any JSON
    value; a Boolean's bind processor refuses what is not one). Text in an indexed column is at most
    MAX_INDEXED_TEXT characters, the same on both databases (SQLite would index any length)."""
    impl = impl.impl if isinstance(impl, TypeDecorator) else impl  # sqlmodel's AutoString wraps String
    if isinstance(impl, Integer):
        bounds = INT64 if isinstance(impl, BigInteger) else INT32

        def integer(value: Any) -> Any:
            if value is None or (value.__class__ is int and value in bounds):
                return value
            if value.__class__ is int:
                raise UnstorableValue(f"{column}: {value} is out of range for its column")
            raise UnstorableValue(f"{column}: {str(value)[:80]!r} is not an integer")

        return integer
    if isinstance(impl, String):
        limit = MAX_INDEXED_TEXT if indexed else None

        def text(value: Any) -> Any:
            if value is None or (value.__class__ is str and (limit is None or len(value) <= limit)):
                return value
            if value.__class__ is str:
                raise UnstorableValue(
                    f"{column}: {len(value)} characters, more than its index takes ({limit})"
                )
            raise UnstorableValue(f"{column}: {str(value)[:80]!r} is not text")

        return text
    return None


def _converter(impl: Any, processor: Convert, dialect: Dialect) -> Convert:
    """A function with the same results (and errors) as ``processor`` for every value a JSON
    document can hold, cheaper on the common ones."""
    if isinstance(impl, Boolean):
        # Three values: a lookup skips two Python calls per column (1 and 1.0 find the True entry,
        # which the processor maps to the same result as them).
        return _Precomputed(processor, (True, False, None)).__getitem__
    if isinstance(impl, JSON):
        return _json_converter(impl, processor, dialect)
    return processor


def _then(first: Convert, second: Convert) -> Convert:
    return lambda value: second(first(value))


# A statement's parameters from a row: (key, data, tail) -> what the driver takes.
Params = Callable[[Mapping[str, Any], Mapping[str, Any], Sequence[Any]], Any]


def _picker(indices: Sequence[int]) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
    """The values at ``indices`` of a sequence, as a tuple (in one C call from two of them)."""
    if not indices:
        return lambda row: ()
    if len(indices) == 1:
        (index,) = indices
        return lambda row: (row[index],)
    return itemgetter(*indices)


def _positional(indices: list[int], head: int, converts: Sequence[tuple[int, Convert]]) -> Params:
    """A list in parameter order; ``indices`` says where each value is in the row, whose first
    ``head`` values are those of the two mappings."""
    split = len(indices) - head
    if indices[split:] == list(range(head)):  # (indices are distinct: the rest are tail values)
        # The usual layout (the table's order): some tail values, then the mappings' values in
        # their own order, so the list is built in one go.
        pick_tail = _picker([index - head for index in indices[:split]])

        def in_order(key: Mapping[str, Any], data: Mapping[str, Any], tail: Sequence[Any]) -> Any:
            values = [*pick_tail(tail), *key.values(), *data.values()]
            for index, convert in converts:
                values[index] = convert(values[index])
            return values

        return in_order
    pick = _picker(indices)

    def picked(key: Mapping[str, Any], data: Mapping[str, Any], tail: Sequence[Any]) -> Any:
        values = list(pick((*key.values(), *data.values(), *tail)))
        for index, convert in converts:
            values[index] = convert(values[index])
        return values

    return picked


def _named(
    names: tuple[str, ...],
    indices: list[int],
    tail_names: tuple[str, ...],
    converts: Sequence[tuple[str, Convert]],
    repeats: bool,
) -> Params:
    """A dict by name, in any order (the driver looks the names up)."""
    if not repeats:
        # Each value of the row is a parameter: the mappings are copied as they are, data in one
        # go, then the tail is added.
        def merged(key: Mapping[str, Any], data: Mapping[str, Any], tail: Sequence[Any]) -> Any:
            named = {**data, **key}
            if tail_names:
                named.update(zip(tail_names, tail, strict=False))  # equal lengths: strict costs more
            for name, convert in converts:
                named[name] = convert(named[name])
            return named

        return merged
    pick = _picker(indices)

    def picked(key: Mapping[str, Any], data: Mapping[str, Any], tail: Sequence[Any]) -> Any:
        named = dict(zip(names, pick((*key.values(), *data.values(), *tail)), strict=True))
        for name, convert in converts:
            named[name] = convert(named[name])
        return named

    return picked


class PreparedStatement:
    """``statement`` compiled for ``dialect``, with ``params(key, data, tail)``: the driver's
    parameters for a row made of a ``key`` mapping, a ``data`` mapping and ``tail``, the values of
    the column names in ``tail``, as ``{**key, **data, **dict(zip(tail_names, tail))}`` would be (a
    name given twice is one parameter, with the last value), converted by the columns' bind
    processors: a list in parameter order when positional (SQLite), else a dict (PostgreSQL).

    ``values_clause=True``: an INSERT whose VALUES are exactly those columns (no .values() given);
    otherwise every parameter must be an explicit bindparam.
    """

    __slots__ = ("dialect", "params", "sql")

    def __init__(
        self,
        statement: Any,
        dialect: Dialect,
        *,
        key: Sequence[str] = (),
        data: Sequence[str] = (),
        tail: Sequence[str] = (),
        values_clause: bool = True,
    ) -> None:
        parts = (*key, *data, *tail)
        last = {name: index for index, name in enumerate(parts)}  # keeps first-seen order
        names = tuple(last)
        compiled = statement.compile(dialect=dialect, column_keys=list(names) if values_clause else None)
        self.sql: str = compiled.string
        self.dialect: Dialect = dialect
        unexpected = set(compiled.binds) - set(names)
        if unexpected:
            raise RuntimeError(f"statement has parameters {sorted(unexpected)} that are not values")
        converters: dict[str, Convert] = {}
        table = getattr(statement, "table", None)
        table_name, indexed = getattr(table, "name", "?"), _indexed_columns(table)
        for name, bind in compiled.binds.items():
            impl = bind.type.dialect_impl(dialect)
            processor = impl.bind_processor(dialect)
            check = _value_check(impl, f"{table_name}.{name}", name in indexed)
            if processor is not None:
                converters[name] = _converter(impl, processor, dialect)
                if check is not None:
                    converters[name] = _then(check, converters[name])
            elif check is not None:
                converters[name] = check
        # The few values that need it (JSON, booleans, ...) are converted in place, in parameter order.
        order: tuple[str, ...] = tuple(compiled.positiontup) if compiled.positional else names
        indices = [last[name] for name in order]
        self.params: Params
        if compiled.positional:
            converts = [(index, converters[name]) for index, name in enumerate(order) if name in converters]
            self.params = _positional(indices, len(key) + len(data), converts)
        else:
            named = [(name, converters[name]) for name in order if name in converters]
            self.params = _named(names, indices, tuple(tail), named, len(names) < len(parts))
