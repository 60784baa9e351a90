"""The single guarded write every handler uses: INSERT ... ON CONFLICT DO UPDATE ... WHERE newer.

There is no read-then-write, so concurrent receivers (several processes on PostgreSQL) cannot lose
an update: the database row lock serialises the two statements and the WHERE clause sees the row as
the other one left it. The final state is a pure function of the set of events seen, whatever their
order: the data columns hold the snapshot of the greatest version, and the tombstone is a flag that
only ever turns on (with the earliest deleting event remembered).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from functools import lru_cache
from typing import Any, NamedTuple

import orjson
from sqlalchemy import JSON, Dialect, Table, and_, bindparam, case, delete, exists, or_, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlmodel import SQLModel

from app.db.models import VERSION_NAMES
from app.json_text import driver_json_text
from app.mirror.driver_sql import PreparedStatement
from app.mirror.writes import BULK_FORMS, FOOTPRINTS, KEYED_STATEMENTS, BulkForm, Writes

VERSION_COLUMNS = VERSION_NAMES
TOMBSTONE_COLUMNS = ("deleted", "deleted_by_event_id", "deleted_by_event_created")


class Version(NamedTuple):
    """Total order of snapshots of one object; field order is comparison order (and the order of
    VERSION_COLUMNS). A tuple: built for every row planned, and unpacked straight into its row."""

    precedence: int
    created: int
    tiebreak: int
    event_id: str

    def as_columns(self) -> dict[str, Any]:
        return dict(zip(VERSION_COLUMNS, self, strict=True))


# A tombstone that arrives without a snapshot must not block the snapshot that comes later.
NO_DATA = Version(-1, 0, 0, "")


def dialect_insert(dialect: str, table: Table) -> Any:
    """INSERT with ON CONFLICT support for a dialect name (the statement caches key on the name)."""
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise RuntimeError(f"Unsupported database dialect {dialect!r}")


def table_of(model: type[SQLModel]) -> Table:
    return model.__table__  # type: ignore[attr-defined,no-any-return]


def guarded_upsert(
    writes: Writes,
    model: type[SQLModel],
    key: Mapping[str, Any],
    data: Mapping[str, Any],
    version: Version,
    *,
    deleted_by: tuple[str, int] | None = None,
) -> None:
    """Plan: write ``data`` for the row at ``key`` unless the row holds a newer version.

    ``deleted_by=(event_id, created)`` also marks the row deleted. When it runs, the database's count
    of rows touched says whether the row was written: when the WHERE of DO UPDATE is false, none is.
    (No RETURNING: it makes each SQLite upsert three times slower.)
    """
    if deleted_by is not None and "deleted" not in table_of(model).c:
        raise ValueError(f"{table_of(model).name} has no tombstone columns")
    prepared, tombstoned = _prepared_upsert(
        writes.dialect, model, tuple(key), tuple(data), deleting=deleted_by is not None
    )
    # The row ends with the version and the account, then (_prepared_upsert says when) the tombstone.
    if not tombstoned:
        tail: tuple[Any, ...] = (*version, writes.account)
    elif deleted_by is None:
        tail = (*version, writes.account, False, None, None)
    else:
        tail = (*version, writes.account, True, deleted_by[0], deleted_by[1])
    writes.add(prepared.sql, prepared.params(key, data, tail))


def guarded_upsert_many(
    writes: Writes,
    model: type[SQLModel],
    rows: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]],
    version: Version,
) -> None:
    """Plan ``guarded_upsert`` for many ``(key, data)`` rows of one shape written with one version
    (e.g. the lines of one invoice snapshot), as a single driver call. Each row is still its own
    guarded INSERT .. ON CONFLICT."""
    if not rows:
        return
    key_names, data_names = tuple(rows[0][0]), tuple(rows[0][1])
    prepared, tombstoned = _prepared_upsert(writes.dialect, model, key_names, data_names)
    if tombstoned:
        raise ValueError(f"{table_of(model).name} has tombstone columns: use guarded_upsert")
    params = prepared.params
    tail = (*version, writes.account)
    planned: list[Any] = []
    for key, data in rows:
        # The statement was chosen by the first row: every other one must have its shape.
        if planned and (tuple(key) != key_names or tuple(data) != data_names):
            raise ValueError("guarded_upsert_many needs rows with the same columns")
        planned.append(params(key, data, tail))
    writes.add(prepared.sql, planned, many=True)


@lru_cache(maxsize=256)
def _prepared_upsert(
    dialect: Dialect,
    model: type[SQLModel],
    key: tuple[str, ...],
    data: tuple[str, ...],
    deleting: bool = False,
) -> tuple[PreparedStatement, bool]:
    """Built and compiled once per shape of upsert; runs on the driver connection (app.mirror.driver_sql).
    Also says whether the table has tombstone columns (they end every row, after the version);
    ``deleting``: the row is written with its tombstone set (``deleted_by``)."""
    table = table_of(model)
    tombstoned = "deleted" in table.c
    tail = (*VERSION_COLUMNS, "account", *(TOMBSTONE_COLUMNS if tombstoned else ()))
    columns = tuple(dict.fromkeys(key + data + tail))  # a name given twice is one column
    statement = _upsert_statement(dialect.name, table, key, columns, tombstoned and deleting)
    prepared = PreparedStatement(statement, dialect, key=key, data=data, tail=tail)
    if dialect.name == "postgresql":
        BULK_FORMS[prepared.sql] = _bulk_form(prepared.sql, table, dialect, key)
        FOOTPRINTS[prepared.sql] = _row_footprint(table.name, key)
    return prepared, tombstoned


def _row_footprint(table_name: str, key: tuple[str, ...]) -> Callable[[Any], tuple[Hashable, ...]]:
    """The one row an upsert writes (and reads), by its key."""
    if len(key) == 1:
        (name,) = key
        return lambda row: ((table_name, row[name]),)
    return lambda row: ((table_name, tuple(row[name] for name in key)),)


def footprint_of_parent(marker_table: str, index: int | str = 0) -> Callable[[Any], tuple[Hashable, ...]]:
    """The footprint of a statement about all the children of a parent (its parameter ``index``):
    the parent's marker row (e.g. an invoice's line set) names everything such statements touch."""
    return lambda row: ((marker_table, row[index]),)


_PLACEHOLDER = re.compile(r"%\((\w+)\)s(?:::[A-Z ]+)?")  # %(name)s, with the cast psycopg's dialect adds


def _bulk_form(sql: str, table: Table, dialect: Dialect, key: tuple[str, ...]) -> BulkForm:
    """The upsert ``sql`` (``INSERT INTO t (a, b) VALUES (%(a)s, %(b)s) ON CONFLICT ...``) with its
    VALUES read from ``json_to_recordset`` of the rows, each column typed as in the table. JSON columns
    are read as the text the driver would have sent, then cast: a JSON null stays JSON, not NULL."""
    head, _, rest = sql.partition(" VALUES (")
    values, _, conflict = rest.partition(") ON CONFLICT ")
    placeholders = [_PLACEHOLDER.fullmatch(placeholder) for placeholder in values.split(", ")]
    names = tuple(match[1] for match in placeholders if match is not None)
    listed = head[head.index("(") + 1 : head.rindex(")")].split(", ")
    if not conflict or len(listed) != len(names) != len(placeholders):
        raise RuntimeError(f"unexpected upsert SQL for a bulk form: {sql[:200]}")
    declared, selected = [], []
    for name, column in zip(names, listed, strict=True):
        column_type = table.c[column.strip('"')].type
        compiled = column_type.compile(dialect=dialect)
        if isinstance(column_type.dialect_impl(dialect), JSON):
            declared.append(f'"{name}" text')
            selected.append(f'"{name}"::{compiled}')
        else:
            declared.append(f'"{name}" {compiled}')
            selected.append(f'"{name}"')
    bulk = (
        f"{head} SELECT {', '.join(selected)} FROM json_to_recordset(%(rows)s::json)"
        f" AS bulk({', '.join(declared)}) ON CONFLICT {conflict}"
    )
    return BulkForm(bulk, key, _rows_document)


def _rows_document(rows: Sequence[Any]) -> dict[str, str]:
    return {"rows": orjson.dumps(rows, default=driver_json_text).decode()}


@lru_cache(maxsize=256)
def _upsert_statement(
    dialect: str, table: Table, key: tuple[str, ...], columns: tuple[str, ...], deleting: bool
) -> Any:
    """The guarded upsert. Unless ``deleting``, the row's tombstone (if it has one) is not set by this
    write: as an update it could not change (``deleted OR false``, an earlier delete that is none),
    so the tombstone columns are only inserted, never updated."""
    stmt = dialect_insert(dialect, table)
    new = stmt.excluded
    current_version = tuple_(*(table.c[name] for name in VERSION_COLUMNS))
    incoming_version = tuple_(*(new[name] for name in VERSION_COLUMNS))
    incoming_wins = incoming_version >= current_version

    data_columns = [name for name in columns if name not in key and name not in TOMBSTONE_COLUMNS]
    if not deleting:
        # One version guard for the whole row: the update happens only when the incoming version
        # wins, so each column simply takes the incoming value (no CASE per column, which PostgreSQL
        # builds into the projection of every execution and psycopg has to parse in a longer text).
        set_plain = {name: new[name] for name in data_columns}
        return stmt.on_conflict_do_update(index_elements=list(key), set_=set_plain, where=incoming_wins)
    # A deleting write may change a row only because its delete is the earlier one: then the data
    # columns keep their values, hence the CASE per column.
    set_: dict[str, Any] = {
        name: case((incoming_wins, new[name]), else_=table.c[name]) for name in data_columns
    }
    # Remember the earliest deleting event so replays in any order agree.
    earlier_delete = and_(
        new.deleted,
        or_(
            table.c.deleted_by_event_id.is_(None),
            tuple_(new.deleted_by_event_created, new.deleted_by_event_id)
            < tuple_(table.c.deleted_by_event_created, table.c.deleted_by_event_id),
        ),
    )
    set_["deleted"] = or_(table.c.deleted, new.deleted)
    for name in ("deleted_by_event_id", "deleted_by_event_created"):
        set_[name] = case((earlier_delete, new[name]), else_=table.c[name])
    changed = or_(incoming_wins, earlier_delete)

    return stmt.on_conflict_do_update(index_elements=list(key), set_=set_, where=changed)


def delete_superseded(
    writes: Writes,
    child_model: type[SQLModel],
    child_parent_column: str,
    marker_model: type[SQLModel],
    marker_parent_column: str,
    parent_id: str,
) -> None:
    """Plan: delete the children of ``parent_id`` written by a version older than the marker row's.

    The marker is a guarded row (e.g. the newest complete list of an invoice's lines). One DELETE whose
    comparison happens in the database against the marker as it stands: an older snapshot can never
    remove rows a newer one wrote, and rows an older snapshot re-inserts after a newer complete one
    are removed again, so the result does not depend on delivery order.
    """
    prepared = _superseded_statement(
        writes.dialect, child_model, child_parent_column, marker_model, marker_parent_column
    )
    writes.add(prepared.sql, prepared.params({}, {"parent_id": parent_id}, ()))


@lru_cache(maxsize=64)
def _superseded_statement(
    dialect: Dialect,
    child_model: type[SQLModel],
    child_parent_column: str,
    marker_model: type[SQLModel],
    marker_parent_column: str,
) -> PreparedStatement:
    """Built and compiled once per pair of tables; runs on the driver connection (app.mirror.driver_sql)."""
    child, marker = table_of(child_model), table_of(marker_model)
    child_version = tuple_(*(child.c[name] for name in VERSION_COLUMNS))
    marker_version = tuple_(*(marker.c[name] for name in VERSION_COLUMNS))
    superseded = (
        exists()
        .where(marker.c[marker_parent_column] == child.c[child_parent_column], child_version < marker_version)
        .correlate(child)
    )
    statement = delete(child).where(child.c[child_parent_column] == bindparam("parent_id"), superseded)
    prepared = PreparedStatement(statement, dialect, data=("parent_id",), values_clause=False)
    FOOTPRINTS[prepared.sql] = footprint_of_parent(marker.name, "parent_id")
    KEYED_STATEMENTS.add(prepared.sql)  # the children by their parent's index, the marker by its key
    return prepared


def delete_unlisted(
    session: Session,
    model: type[SQLModel],
    parent_column: str,
    parent_id: str,
    listed_ids: Collection[str],
    version: Version,
) -> int:
    """Delete the rows of ``parent_id`` missing from a complete list known at ``version``, unless a
    newer version wrote them. One guarded DELETE (used by backfills, whose list is newer than the
    snapshot it is attributed to)."""
    table = table_of(model)
    stored = tuple_(*(table.c[name] for name in VERSION_COLUMNS))
    condition = and_(table.c[parent_column] == parent_id, stored <= tuple_(*version))
    if listed_ids:
        condition = and_(condition, table.c.id.not_in(list(listed_ids)))
    return int(session.execute(delete(table).where(condition)).rowcount or 0)  # type: ignore[attr-defined]
