"""Sync inside the receiver: ``serve`` with an API key catches up from the Events API every so often
(``--catch-up-every``) and reads again what the mirror knows is out of date (app.sync.refresh).

Several receivers may share one database (``--workers``, or several hosts on PostgreSQL): only one
of them runs a round at a time, under a lock of the database (a PostgreSQL advisory lock, or a lock
file beside a SQLite file); the others skip that round.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from sqlalchemy import Engine, text

from app.db.engine import sqlite_path
from app.ingest.store import EventStore
from app.settings import Settings
from app.sync.catch_up import catch_up
from app.sync.fetch import StripeApi, StripeReader
from app.sync.refresh import refresh
from app.webhook.metrics import Metrics

logger = logging.getLogger("billing_mirror.sync")
_PROCESS_LOCKS: dict[str, threading.Lock] = {}


def _lock_key(name: str) -> int:
    """A signed 64-bit key for pg_try_advisory_lock, the same in every process."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


@contextlib.contextmanager
def exclusive(engine: Engine, database_url: str, name: str) -> Iterator[bool]:
    """Whether this process holds the lock ``name`` of the database for the block (never waits)."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            key = _lock_key(name)
            held = bool(connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar())
            connection.commit()
            try:
                yield held
            finally:
                if held:
                    connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                    connection.commit()
        return
    path = sqlite_path(database_url)
    if path is None:  # an in-memory database: only this process can reach it
        lock = _PROCESS_LOCKS.setdefault(name, threading.Lock())
        held = lock.acquire(blocking=False)
        try:
            yield held
        finally:
            if held:
                lock.release()
        return
    lock_file = Path(f"{path}.{name.replace(':', '-')}.lock")
    with lock_file.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def lock_name(kind: str, account: str | None) -> str:
    return f"billing-mirror-{kind}:{account or ''}"


class BackgroundSync:
    """A thread of the receiver: a catch-up round every ``catch_up_seconds`` (when set) and a refresh
    round every ``refresh_seconds``, each under the lock of its kind."""

    def __init__(self, settings: Settings, engine: Engine, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.engine = engine
        api_key = settings.require_api_key()
        self.api = StripeApi(
            api_key,
            settings.stripe_api_version,
            api_base=settings.stripe_api_base,
            stripe_account=settings.stripe_account,
        )
        self.reader = StripeReader(self.api)
        self.store = EventStore(engine)
        self.rounds = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="billing-mirror-background-sync", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _run(self) -> None:
        catch_up_every = self.settings.catch_up_seconds
        refresh_every = self.settings.refresh_seconds
        next_catch_up = time.monotonic() if catch_up_every else float("inf")
        next_refresh = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_catch_up and catch_up_every:
                self._round("catch-up", self._catch_up)
                next_catch_up = time.monotonic() + catch_up_every
            if now >= next_refresh:
                self._round("refresh", self._refresh)
                next_refresh = time.monotonic() + refresh_every
            self._stop.wait(max(0.05, min(next_catch_up, next_refresh) - time.monotonic()))

    def _round(self, kind: str, work: Callable[[], None]) -> None:
        name = lock_name(kind, self.api.stripe_account)
        result = "skipped"
        started = time.monotonic()
        try:
            with exclusive(self.engine, self.settings.database_url, name) as held:
                if held:
                    work()
                    self.rounds += 1
                    result = "done"
        except Exception as exc:  # a round that failed is tried again at the next one
            result = "failed"
            logger.warning("%s failed: %s: %s", kind, type(exc).__name__, exc)
        if self.metrics is not None:
            self.metrics.sync_round(kind, result)
        logger.debug("%s round %s in %.2f s", kind, result, time.monotonic() - started)

    def _catch_up(self) -> None:
        report = catch_up(self.reader, self.engine, self.store)
        if self.metrics is not None:
            counts = {
                "applied": report.applied,
                "duplicate": report.duplicates,
                "stale": report.stale,
                "ignored": report.ignored,
                "failed": report.failed,
                "unreadable": report.unreadable,
            }
            self.metrics.sync_stored("catch-up", counts)
        if report.gap_lost:
            logger.warning(
                "catch-up: the mirror's newest event is older than the 30 days Stripe keeps events;"
                " run `billing-mirror sync --full` to read every object again"
            )
        if report.events:
            logger.info(
                "catch-up: %d events read, %d applied, %d already stored, %d failed",
                report.events,
                report.applied,
                report.duplicates,
                report.failed,
            )

    def _refresh(self) -> None:
        report = refresh(self.reader, self.engine, self.store)
        if self.metrics is not None:
            counts = {
                "items": report.items,
                "invoices": report.invoices,
                "gone": report.gone,
                "failed": report.failed,
            }
            self.metrics.sync_stored("refresh", counts)
        if report.total or report.gone:
            logger.info(
                "refresh: %d invoice items and %d invoices read again (%d gone from Stripe, %d failed)",
                report.items,
                report.invoices,
                report.gone,
                report.failed,
            )
