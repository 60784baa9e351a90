"""The single guarded write every handler uses: INSERT ... ON CONFLICT DO UPDATE ... WHERE newer.

There is no read-then-write, so concurrent receivers (several processes on PostgreSQL) cannot lose
an update: the database row lock serialises the two statements and the WHERE clause sees the row as
the other one left it. The final state is a pure function of the set of events seen, whatever their
order: the data columns hold the snapshot of the greatest version, and the tombstone is a flag that
only ever turns on (with the earliest deleting event remembered).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import Dialect, Table, and_, bindparam, case, delete, exists, or_, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlmodel import SQLModel

from app.driver_sql import PreparedStatement
from app.writes import Writes

VERSION_COLUMNS = ("version_precedence", "last_event_created", "version_tiebreak", "last_event_id")
TOMBSTONE_COLUMNS = ("deleted", "deleted_by_event_id", "deleted_by_event_created")


@dataclass(frozen=True, order=True)
class Version:
    """Total order of snapshots of one object; field order is comparison order."""

    precedence: int
    created: int
    tiebreak: int
    event_id: str

    def as_columns(self) -> dict[str, Any]:
        values = (self.precedence, self.created, self.tiebreak, self.event_id)
        return dict(zip(VERSION_COLUMNS, values, strict=True))


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
    table = table_of(model)
    tombstoned = "deleted" in table.c
    values: dict[str, Any] = {**key, **data, **version.as_columns()}
    if tombstoned:
        values["deleted"] = deleted_by is not None
        values["deleted_by_event_id"] = deleted_by[0] if deleted_by else None
        values["deleted_by_event_created"] = deleted_by[1] if deleted_by else None
    elif deleted_by is not None:
        raise ValueError(f"{table.name} has no tombstone columns")
    prepared = _prepared_upsert(writes.dialect, table, tuple(key), tuple(values), tombstoned)
    writes.add(prepared.sql, prepared.params(values))


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
    table = table_of(model)
    if "deleted" in table.c:
        raise ValueError(f"{table.name} has tombstone columns: use guarded_upsert")
    version_columns = version.as_columns()
    values = [{**key, **data, **version_columns} for key, data in rows]
    shape = tuple(values[0])
    if any(tuple(row) != shape for row in values):
        raise ValueError("guarded_upsert_many needs rows with the same columns")
    prepared = _prepared_upsert(writes.dialect, table, tuple(rows[0][0]), shape, False)
    writes.add(prepared.sql, [prepared.params(row) for row in values], many=True)


@lru_cache(maxsize=256)
def _prepared_upsert(
    dialect: Dialect, table: Table, key: tuple[str, ...], columns: tuple[str, ...], tombstoned: bool
) -> PreparedStatement:
    """Built and compiled once per shape of upsert; runs on the driver connection (app.driver_sql)."""
    statement = _upsert_statement(dialect.name, table, key, columns, tombstoned)
    return PreparedStatement(statement, columns, dialect)


@lru_cache(maxsize=256)
def _upsert_statement(
    dialect: str, table: Table, key: tuple[str, ...], columns: tuple[str, ...], tombstoned: bool
) -> Any:
    stmt = dialect_insert(dialect, table)
    new = stmt.excluded
    current_version = tuple_(*(table.c[name] for name in VERSION_COLUMNS))
    incoming_version = tuple_(*(new[name] for name in VERSION_COLUMNS))
    incoming_wins = incoming_version >= current_version

    data_columns = [name for name in columns if name not in key and name not in TOMBSTONE_COLUMNS]
    set_: dict[str, Any] = {
        name: case((incoming_wins, new[name]), else_=table.c[name]) for name in data_columns
    }
    changed = incoming_wins
    if tombstoned:
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
    child, marker = table_of(child_model), table_of(marker_model)
    prepared = _superseded_statement(writes.dialect, child, child_parent_column, marker, marker_parent_column)
    writes.add(prepared.sql, prepared.params({"parent_id": parent_id}))


@lru_cache(maxsize=64)
def _superseded_statement(
    dialect: Dialect, child: Table, child_parent_column: str, marker: Table, marker_parent_column: str
) -> PreparedStatement:
    """Built and compiled once per pair of tables; runs on the driver connection (app.driver_sql)."""
    child_version = tuple_(*(child.c[name] for name in VERSION_COLUMNS))
    marker_version = tuple_(*(marker.c[name] for name in VERSION_COLUMNS))
    superseded = (
        exists()
        .where(marker.c[marker_parent_column] == child.c[child_parent_column], child_version < marker_version)
        .correlate(child)
    )
    statement = delete(child).where(child.c[child_parent_column] == bindparam("parent_id"), superseded)
    return PreparedStatement(statement, ("parent_id",), dialect, values_clause=False)


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
    condition = and_(table.c[parent_column] == parent_id, stored <= tuple_(*version.as_columns().values()))
    if listed_ids:
        condition = and_(condition, table.c.id.not_in(list(listed_ids)))
    return int(session.execute(delete(table).where(condition)).rowcount or 0)  # type: ignore[attr-defined]
