"""Where a sync stands, in the database: its windows (``sync_windows``) and, per resource, its state
(``sync_state``: backfill started and finished, the Events API watermark).

A page's checkpoint is written in the transaction that applies the page (planned writes, app.ingest's
``after``), so a killed sync never counts a page it did not apply, and never loses one it did.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Dialect, Engine, and_, delete, select, update

from app.db.models import SyncState, SyncWindow
from app.ingest.store import received_now
from app.mirror.upsert import dialect_insert, table_of
from app.mirror.writes import Write

WINDOWS = table_of(SyncWindow)
STATE = table_of(SyncState)
EVENTS_RESOURCE = "events"


def span_of(gte: int | None, lt: int | None) -> str:
    return f"{'' if gte is None else gte}..{'' if lt is None else lt}"


@dataclass
class Window:
    """One window of a list: its ``created`` filter, how far it got, and what it read so far."""

    resource: str
    created_gte: int | None = None
    created_lt: int | None = None
    cursor: str | None = None
    done: bool = False
    objects: int = 0
    pages: int = 0
    position: int | None = None  # created of the oldest object read so far (progress estimates)

    @property
    def span(self) -> str:
        return span_of(self.created_gte, self.created_lt)

    def params(self) -> dict[str, Any]:
        created = {}
        if self.created_gte is not None:
            created["gte"] = self.created_gte
        if self.created_lt is not None:
            created["lt"] = self.created_lt
        return {"created": created} if created else {}

    def copy(self) -> Window:
        return replace(self)


def _marks(dialect: Dialect, count: int) -> str:
    return ", ".join(["?" if dialect.name == "sqlite" else "%s"] * count)


def _flag(dialect: Dialect, value: bool) -> Any:
    return int(value) if dialect.name == "sqlite" else value


def page_checkpoint(
    dialect: Dialect,
    account: str,
    window: Window,
    page_objects: int,
    new_windows: Sequence[Window],
    fetched_at: int,
) -> list[Write]:
    """The writes that record one applied page: the window as it stands after it (``window`` is a copy
    taken then), the windows split off from it, and the resource's count and start."""
    mark = "?" if dialect.name == "sqlite" else "%s"
    now = received_now(dialect)
    writes: list[Write] = [
        (
            f"UPDATE sync_windows SET cursor = {mark}, done = {mark},"
            f" objects = objects + {mark}, pages = pages + 1, updated_at = {mark}"
            f" WHERE account = {mark} AND resource = {mark} AND span = {mark}",
            (
                window.cursor,
                _flag(dialect, window.done),
                page_objects,
                now,
                account,
                window.resource,
                window.span,
            ),
            False,
        )
    ]
    if new_windows:
        unset = _flag(dialect, False)
        writes.append(
            (
                "INSERT INTO sync_windows (account, resource, span, created_gte, created_lt,"
                f" cursor, done, objects, pages, updated_at) VALUES ({_marks(dialect, 10)})"
                " ON CONFLICT (account, resource, span) DO NOTHING",
                [
                    (
                        account,
                        new.resource,
                        new.span,
                        new.created_gte,
                        new.created_lt,
                        None,
                        unset,
                        0,
                        0,
                        now,
                    )
                    for new in new_windows
                ],
                True,
            )
        )
    writes.append(
        (
            f"UPDATE sync_state SET objects = objects + {mark}, started_at = COALESCE(started_at, {mark}),"
            f" updated_at = {mark} WHERE account = {mark} AND resource = {mark}",
            (page_objects, fetched_at, now, account, window.resource),
            False,
        )
    )
    return writes


@dataclass(frozen=True)
class ResourceState:
    started_at: int | None
    finished_at: int | None
    objects: int
    watermark: int | None


class Checkpoints:
    """Sync state of one account (``""``: the account of the key) in the mirror's database."""

    def __init__(self, engine: Engine, account: str | None) -> None:
        self.engine = engine
        self.account = account or ""

    def _state_key(self, resource: str) -> Any:
        return and_(STATE.c.account == self.account, STATE.c.resource == resource)

    def state(self, resource: str) -> ResourceState | None:
        with self.engine.connect() as connection:
            row = connection.execute(
                select(STATE.c.started_at, STATE.c.finished_at, STATE.c.objects, STATE.c.watermark).where(
                    self._state_key(resource)
                )
            ).first()
        return None if row is None else ResourceState(*row)

    def open_windows(self, resource: str) -> list[Window]:
        columns = [WINDOWS.c[name] for name in ("created_gte", "created_lt", "cursor")]
        columns += [WINDOWS.c.objects, WINDOWS.c.pages]
        query = (
            select(*columns)
            .where(
                WINDOWS.c.account == self.account, WINDOWS.c.resource == resource, WINDOWS.c.done.is_(False)
            )
            .order_by(WINDOWS.c.created_lt.desc())
        )
        with self.engine.connect() as connection:
            return [
                Window(resource, gte, lt, cursor, False, objects, pages)
                for gte, lt, cursor, objects, pages in connection.execute(query)
            ]

    def window_count(self, resource: str) -> tuple[int, int]:
        """(windows done, windows open) of the resource's backfill."""
        with self.engine.connect() as connection:
            found = connection.execute(
                select(WINDOWS.c.done, WINDOWS.c.span).where(
                    WINDOWS.c.account == self.account, WINDOWS.c.resource == resource
                )
            ).all()
        done = sum(1 for is_done, _ in found if is_done)
        return done, len(found) - done

    def begin(self, resource: str, first: Window, *, full: bool) -> tuple[bool, list[Window]]:
        """Start (or resume) the backfill of ``resource``: (already finished, windows to fetch). With
        ``full``, what was recorded is forgotten and the backfill starts over from ``first``."""
        windows = WINDOWS.c
        with self.engine.begin() as connection:
            if full:
                connection.execute(
                    delete(WINDOWS).where(windows.account == self.account, windows.resource == resource)
                )
                connection.execute(
                    update(STATE)
                    .where(self._state_key(resource))
                    .values(started_at=None, finished_at=None, objects=0)
                )
            state = connection.execute(select(STATE.c.finished_at).where(self._state_key(resource))).first()
            known = connection.execute(
                select(windows.span)
                .where(windows.account == self.account, windows.resource == resource)
                .limit(1)
            ).first()
            if state is None:
                insert = dialect_insert(self.engine.dialect.name, STATE)
                connection.execute(
                    insert.values(account=self.account, resource=resource, objects=0, updated_at=_now())
                )
            elif state.finished_at is not None and known is not None:
                open_left = connection.execute(
                    select(windows.span)
                    .where(
                        windows.account == self.account, windows.resource == resource, windows.done.is_(False)
                    )
                    .limit(1)
                ).first()
                if open_left is None:
                    return True, []
            if known is None:
                connection.execute(
                    WINDOWS.insert().values(
                        account=self.account,
                        resource=resource,
                        span=first.span,
                        created_gte=first.created_gte,
                        created_lt=first.created_lt,
                        done=False,
                        objects=0,
                        pages=0,
                        updated_at=_now(),
                    )
                )
        return False, self.open_windows(resource)

    def finish(self, resource: str, finished_at: int) -> None:
        """Every window of ``resource`` is done: the backfill is finished as of ``finished_at``."""
        with self.engine.begin() as connection:
            connection.execute(
                update(STATE)
                .where(self._state_key(resource))
                .values(finished_at=finished_at, updated_at=_now())
            )

    def watermark(self) -> int | None:
        state = self.state(EVENTS_RESOURCE)
        return None if state is None else state.watermark

    def set_watermark(self, watermark: int) -> None:
        """Every event created before ``watermark`` was read from the Events API (never moves back)."""
        insert = dialect_insert(self.engine.dialect.name, STATE)
        statement = insert.values(
            account=self.account, resource=EVENTS_RESOURCE, objects=0, watermark=watermark, updated_at=_now()
        )
        current = STATE.c.watermark
        statement = statement.on_conflict_do_update(
            index_elements=["account", "resource"],
            set_={"watermark": statement.excluded.watermark, "updated_at": statement.excluded.updated_at},
            where=current.is_(None) | (current < statement.excluded.watermark),
        )
        with self.engine.begin() as connection:
            connection.execute(statement)


def _now() -> datetime:
    return datetime.now(UTC)
