"""How every SQLite connection of billing-mirror is set up, and WAL checkpoints off the write path.

Standard library only: the SQLite writer process (app.ingest.sqlite_writer) imports it without SQLAlchemy.
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

# Checkpoint every ~32 MB of WAL instead of ~4 MB: index pages that many commits rewrite are copied to
# the database file once per checkpoint, not once per few commits. Durability is unchanged (each
# commit still syncs the WAL).
WAL_CHECKPOINT_PAGES = 8000
BUSY_TIMEOUT_MS = 30000
# A background checkpoint runs at most this often: each one syncs the database file, so one per
# small commit would cost more than the commits themselves.
CHECKPOINT_INTERVAL_SECONDS = 0.5


def configure_connection(dbapi_connection: Any, *, autocheckpoint: int = WAL_CHECKPOINT_PAGES) -> None:
    """``autocheckpoint=0`` leaves checkpoints to a BackgroundCheckpointer."""
    # Let the caller, not the driver, decide when transactions start.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # WAL lets readers work beside the writer; synchronous=FULL makes every commit durable
    # before we answer 2xx. busy_timeout covers several receiver processes on one file.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute(f"PRAGMA wal_autocheckpoint={int(autocheckpoint)}")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class BackgroundCheckpointer:
    """Copies committed WAL frames into the database file on a thread of its own.

    With automatic checkpoints, the commit that crosses the threshold also copies and syncs the
    whole WAL, on the writer's time. Here the writer only calls ``committed()``; the copying happens
    on another connection, and sqlite3 releases the GIL while it does, so it runs beside the next
    transaction on another core. PASSIVE never blocks the writer or readers. ``checkpoints`` and
    ``log_frames`` tell the writer when a pass ended and how large the WAL was, so that it can copy
    the rest itself and let the WAL start over (app.ingest.sqlite_writer)."""

    def __init__(self, path: str, interval: float = CHECKPOINT_INTERVAL_SECONDS) -> None:
        self.path = path
        self.interval = interval
        self.checkpoints = 0
        self.log_frames = 0  # frames in the WAL when the last pass began
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="billing-mirror-checkpointer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def committed(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._stopped.set()
        self._wake.set()
        self._thread.join()

    def _run(self) -> None:
        connection: sqlite3.Connection | None = None
        try:
            while True:
                self._wake.wait()
                if self._stopping:
                    return
                # Commits that arrive meanwhile share this checkpoint.
                self._stopped.wait(self.interval)
                self._wake.clear()
                if self._stopping:
                    return
                try:
                    if connection is None:
                        connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                        # Sync the WAL before copying it and the database file after: the writer
                        # restarts the WAL once a pass has copied everything.
                        connection.execute("PRAGMA synchronous=FULL")
                    _busy, log_frames, _copied = connection.execute(
                        "PRAGMA wal_checkpoint(PASSIVE)"
                    ).fetchone()
                    self.log_frames = log_frames
                    self.checkpoints += 1
                except sqlite3.Error:
                    # Best effort: the next commit wakes us again, and SQLite checkpoints by itself
                    # when the last connection closes. The writer reports database errors.
                    if connection is not None:
                        connection.close()
                    connection = None
        finally:
            if connection is not None:
                connection.close()
