"""``billing-mirror events prune``: forget stored events received longer ago than a limit.

Kept whatever their age:
- failed events (the mirror applies them again; ``events retry`` needs their body);
- the newest event of every object (``stripe_events.object_id``; newest by ``created``, then id);
- every event that is still the version of a mirrored row (``last_event_id``, ``deleted_by_event_id``
  of the tables with one row per object): a page read by ``sync`` is one event about up to 100
  objects and has no ``object_id``, so this is what keeps the objects that only a snapshot wrote.

So a replay of the pruned log into an empty database rebuilds the current rows of every object
(each row's writer is kept, and a newer event always wins over an older one), but not the older
states in between, nor the rows of the append-only tables (``billing_alert_triggers``,
``billing_meter_error_reports``: one row per event) whose events were pruned; the mirror itself
keeps those rows.

Dead letters received before the limit are deleted too: they never apply, so no replay needs them.

Events are read 1,000 at a time in primary key order and each batch is deleted in a transaction of
its own, so receivers writing meanwhile wait at most for one short DELETE.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, delete, func, select, text

from app.db.models import DeadLetter, StripeEvent
from app.mirror.outcome import Outcome
from app.mirror.upsert import table_of

EVENTS = table_of(StripeEvent)
LETTERS = table_of(DeadLetter)
BATCH = 1000
KEEP_TABLE = "billing_mirror_prune_keep"
# One row per event, not per object: their events are not kept for their rows' sake (module doc).
APPEND_ONLY = frozenset({"billing_alert_triggers", "billing_meter_error_reports"})
VERSION_COLUMNS = ("last_event_id", "deleted_by_event_id")


@dataclass
class PruneReport:
    deleted: int = 0
    kept_failed: int = 0  # received before the limit, kept because failed
    kept_newest: int = 0  # ... because the newest event of its object
    kept_mirrored: int = 0  # ... because a mirrored row still has its version
    kept_recent: int = 0  # received within the limit
    dead_letters_deleted: int = 0
    dead_letters_kept: int = 0
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def mirrored_writer_columns() -> list[tuple[str, str]]:
    """(table, column) of every version column of the mirror's one-row-per-object tables."""
    from sqlmodel import SQLModel

    found: list[tuple[str, str]] = []
    for table in SQLModel.metadata.sorted_tables:
        if table.name in APPEND_ONLY or table.name == EVENTS.name:
            continue
        found.extend((table.name, name) for name in VERSION_COLUMNS if name in table.c)
    return found


def _collect_writers(connection: Connection) -> None:
    """A temporary table of the events that mirrored rows name as their version (this connection's
    own: PostgreSQL and SQLite drop it when it closes)."""
    connection.execute(text(f"DROP TABLE IF EXISTS {KEEP_TABLE}"))  # a pooled connection's earlier one
    connection.execute(text(f"CREATE TEMPORARY TABLE {KEEP_TABLE} (id TEXT PRIMARY KEY)"))
    for table, column in mirrored_writer_columns():
        connection.execute(
            text(
                f"INSERT INTO {KEEP_TABLE} (id) SELECT DISTINCT {column} FROM {table} "
                f"WHERE {column} IS NOT NULL ON CONFLICT DO NOTHING"
            )
        )
    connection.commit()


# The events received before the limit, a page at a time, with what could keep each one.
_PAGE = text(
    f"""
    SELECT e.id, e.outcome, e.object_id,
        CASE WHEN e.object_id IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM stripe_events n
            WHERE n.object_id = e.object_id
              AND (n.created > e.created OR (n.created = e.created AND n.id > e.id))
        ) THEN 1 ELSE 0 END AS newest,
        CASE WHEN EXISTS (SELECT 1 FROM {KEEP_TABLE} k WHERE k.id = e.id) THEN 1 ELSE 0 END AS mirrored
    FROM stripe_events e
    WHERE e.id > :after AND e.received_at < :cutoff
    ORDER BY e.id
    LIMIT :size
    """
).bindparams(bindparam("cutoff", type_=EVENTS.c.received_at.type))


def prune(
    engine: Engine,
    cutoff: datetime,
    *,
    dry_run: bool = False,
    batch_size: int = BATCH,
    on_batch: Callable[[PruneReport], None] | None = None,
) -> PruneReport:
    """Delete (or with ``dry_run`` only count) what was received before ``cutoff`` (aware, UTC) and
    nothing keeps; see the module's doc for what is kept."""
    report = PruneReport(dry_run=dry_run)
    with engine.connect() as connection:
        _collect_writers(connection)
        after = ""
        while True:
            page = connection.execute(_PAGE, {"after": after, "cutoff": cutoff, "size": batch_size}).all()
            connection.commit()
            if not page:
                break
            after = page[-1].id
            doomed = []
            for row in page:
                if row.outcome == Outcome.FAILED.value:
                    report.kept_failed += 1
                elif row.newest:
                    report.kept_newest += 1
                elif row.mirrored:
                    report.kept_mirrored += 1
                else:
                    doomed.append(row.id)
            if doomed and not dry_run:
                # Its own short transaction; an event that failed meanwhile stays.
                gone = connection.execute(
                    delete(EVENTS).where(EVENTS.c.id.in_(doomed), EVENTS.c.outcome != Outcome.FAILED.value)
                )
                connection.commit()
                report.deleted += gone.rowcount
                report.kept_failed += len(doomed) - gone.rowcount
            elif dry_run:
                report.deleted += len(doomed)
            if on_batch is not None:
                on_batch(report)
        report.dead_letters_deleted = _prune_dead_letters(connection, cutoff, dry_run, batch_size)
        total = connection.execute(select(func.count()).select_from(EVENTS)).scalar_one()
        letters = connection.execute(select(func.count()).select_from(LETTERS)).scalar_one()
        connection.execute(text(f"DROP TABLE IF EXISTS {KEEP_TABLE}"))
        connection.commit()
    kept_old = report.kept_failed + report.kept_newest + report.kept_mirrored
    report.kept_recent = int(total) - kept_old - (report.deleted if dry_run else 0)
    report.dead_letters_kept = int(letters) - (report.dead_letters_deleted if dry_run else 0)
    return report


def _prune_dead_letters(connection: Connection, cutoff: datetime, dry_run: bool, batch_size: int) -> int:
    old = LETTERS.c.received_at < cutoff
    if dry_run:
        count = connection.execute(select(func.count()).select_from(LETTERS).where(old)).scalar_one()
        connection.commit()
        return int(count)
    deleted = 0
    while True:
        ids = select(LETTERS.c.id).where(old).order_by(LETTERS.c.id).limit(batch_size)
        gone = connection.execute(delete(LETTERS).where(LETTERS.c.id.in_(ids.scalar_subquery())))
        connection.commit()
        deleted += gone.rowcount
        if gone.rowcount < batch_size:
            return deleted
