"""The SQLite writer child: owns the writes to one SQLite file, so planning and writing use two cores.

SQLite takes one writer at a time, and in one Python process the code that decodes and plans events
and the code that writes them share the GIL. The child, ``python -m app.ingest.sqlite_writer PATH``,
reads batches of planned events (app.ingest.apply.PlannedEvent, plain data) from its stdin
(app.ingest.writer_protocol), stores and applies the batches queued up in one transaction with
exactly the receiver's code (app.ingest.apply), commits, and sends the results back while the
parent is already planning more. Its parents start it through app.ingest.writer_process. WAL
checkpoints run on a thread of the child (BackgroundCheckpointer).

Nothing is answered before its commit is on disk: a batch's results leave only after the WAL
holding its commit was synced (WalSyncer). The child imports the standard library and the app
modules it runs only, so it starts in a few milliseconds.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import os
import queue
import sqlite3
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

from app.db.sqlite_setup import BackgroundCheckpointer, configure_connection
from app.ingest.apply import PlannedEvent, apply_with_recovery, event_sql, is_infrastructure_error
from app.ingest.writer_protocol import decode_request, encode_answer, read_payload

# Batches that queued up while the child was writing are applied in one transaction, up to this many
# events: a busy writer commits less often, and each commit writes fewer pages per event.
MERGED_EVENTS = 10_000
MMAP_BYTES = 1 << 30
# A WAL that only grows costs far more than copying its frames (every frame appended past its end
# makes the kernel allocate and zero file pages), and SQLite restarts it when a transaction begins
# after a checkpoint copied every frame: so a background thread copies the frames every
# CHECKPOINT_PASS_SECONDS, and once a pass found WAL_RESTART_FRAMES (16 MB) the writer copies the rest.
CHECKPOINT_PASS_SECONDS = 0.1
WAL_RESTART_FRAMES = 4000
GC_EVERY_TRANSACTIONS = 100


class SyncFailed(RuntimeError):
    """The WAL could not be synced, or the answers could not be sent: nothing can be answered."""


class _Transactions:
    """BEGIN IMMEDIATE .. COMMIT on the child's connection; each commit wakes the checkpointer.

    Commits are not synced here (synchronous=NORMAL): the WalSyncer syncs the WAL, for every commit
    made so far at once, before any of their answers leaves, while this connection already runs the
    next transaction. NORMAL is SQLite's own setting for a WAL that is synced at checkpoints only: a
    crash can lose the commits not synced yet (none of them was answered), never corrupt the file.
    This connection never checkpoints on its own (autocheckpoint off): ``finish_checkpoint`` does.

    The connection is opened on first use and again after a database error, so a file that cannot
    be opened yet answers DatabaseUnavailable (app.ingest.apply retries, then reports it) instead of ending
    the process."""

    def __init__(self, path: str, checkpointer: BackgroundCheckpointer) -> None:
        self.path = path
        self.checkpointer = checkpointer
        self.commits = 0
        self._connection: sqlite3.Connection | None = None
        self._passes_seen = 0

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            connection = sqlite3.connect(self.path, isolation_level=None)
            try:
                configure_connection(connection, autocheckpoint=0)
                connection.execute("PRAGMA synchronous=NORMAL")
                # Index pages read through a memory map, not one read() each (bench/README.md).
                connection.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
            except sqlite3.Error:
                connection.close()
                raise
            self._connection = connection
        return self._connection

    def finish_checkpoint(self) -> None:
        """After a background pass, copy what was committed during it, so the next transaction
        starts the WAL over. Best effort: a reader still on old frames only delays the restart."""
        passes = self.checkpointer.checkpoints
        if passes == self._passes_seen or self._connection is None:
            return
        self._passes_seen = passes
        if self.checkpointer.log_frames < WAL_RESTART_FRAMES:
            return  # still small: let it grow, fewer restarts copy fewer frames on the write path
        with contextlib.suppress(sqlite3.Error):
            self._connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    @contextmanager
    def __call__(self) -> Iterator[Any]:
        connection = self._connect()
        try:
            connection.execute("BEGIN IMMEDIATE")
            yield connection
            connection.execute("COMMIT")
        except BaseException as exc:
            if connection.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    connection.execute("ROLLBACK")
            if is_infrastructure_error(exc):
                self.close()
            raise
        self.commits += 1
        self.checkpointer.committed()


class WalSyncer:
    """Sends answers only after the WAL holding their commits is on disk, on a thread of its own.

    ``answer`` is called right after a commit, in commit order. The thread takes every answer queued
    so far, syncs the WAL once (fdatasync covers every commit written before it started) and only
    then writes them out, in order. Meanwhile the writer is already running the next transaction,
    so the disk's wait overlaps with the next batch instead of stopping the writer. A duplicate is
    answered after a sync too, so it can never be acknowledged before the event it repeats is on disk.
    """

    def __init__(self, path: str, answers: IO[bytes]) -> None:
        self.wal_path = path + "-wal"
        self.answers = answers
        self.syncs = 0
        self.failure: OSError | None = None
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._fd: int | None = None
        self._thread = threading.Thread(target=self._run, name="billing-mirror-wal-syncer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def answer(self, data: bytes) -> None:
        self._queue.put(data)

    def check(self) -> None:
        if self.failure is not None:
            raise SyncFailed(f"could not sync or send answers: {self.failure}")

    def stop(self) -> None:
        """Send what is queued (after its sync), then end."""
        self._queue.put(None)
        self._thread.join()

    def _sync(self) -> None:
        """fdatasync the WAL file SQLite is using now. Opened by path and checked against it each
        time: if SQLite ever replaced the file, it did so after copying every frame into the
        database file, so only the new one holds commits to sync."""
        try:
            current = os.stat(self.wal_path)
        except FileNotFoundError:  # no WAL (yet): there is nothing unsynced to lose
            return
        if self._fd is not None:
            mine = os.fstat(self._fd)
            if (mine.st_dev, mine.st_ino) != (current.st_dev, current.st_ino):
                os.close(self._fd)
                self._fd = None
        if self._fd is None:
            self._fd = os.open(self.wal_path, os.O_RDONLY)
        os.fdatasync(self._fd)
        self.syncs += 1

    def _run(self) -> None:
        try:
            while True:
                first = self._queue.get()
                taken = [first]
                while not self._queue.empty():
                    taken.append(self._queue.get_nowait())
                pending = [data for data in taken if data is not None]
                if pending:
                    self._sync()
                    for data in pending:
                        self.answers.write(data)
                    self.answers.flush()
                if None in taken:
                    return
        except OSError as exc:
            # A failed sync leaves nothing to answer truthfully, and a parent gone away reads
            # nothing: the writer stops (see ``check``) and the parent answers what is pending
            # unavailable.
            self.failure = exc
        finally:
            if self._fd is not None:
                os.close(self._fd)


Batch = tuple[list[PlannedEvent], bool]


def _read_batches(requests: IO[bytes], batches: queue.SimpleQueue[Batch | None]) -> None:
    """Decode chunks as they arrive (with the GIL, but while the main thread waits on SQLite) and
    hand over whole batches."""
    events: list[PlannedEvent] = []
    new_plan = tuple.__new__  # a NamedTuple from its fields, without a Python-level __new__ call
    try:
        while (chunk := decode_request(read_payload(requests))) is not None:
            part, keep_order, last = chunk
            events.extend([new_plan(PlannedEvent, planned) for planned in part])
            if last:
                batches.put((events, keep_order))
                events = []
    except EOFError:  # the parent went away without saying goodbye: finish what is complete
        pass
    finally:
        batches.put(None)


class _Inbox:
    """The batches read so far; ``take`` returns the oldest together with those queued behind it
    that can share its transaction (same ordering rule, at most MERGED_EVENTS events), in order."""

    def __init__(self, batches: queue.SimpleQueue[Batch | None]) -> None:
        self.batches = batches
        self.held: Batch | None = None  # read, but for the next transaction
        self.ended = False

    def take(self) -> list[Batch]:
        first = self.held if self.held is not None else (None if self.ended else self.batches.get())
        self.held = None
        if first is None:
            self.ended = True
            return []
        group, size = [first], len(first[0])
        while size < MERGED_EVENTS and not self.ended:
            try:
                following = self.batches.get_nowait()
            except queue.Empty:
                break
            if following is None:
                self.ended = True
            elif following[1] != first[1]:
                self.held = following
                break
            else:
                group.append(following)
                size += len(following[0])
        return group


def serve(path: str, requests: IO[bytes], answers: IO[bytes]) -> None:
    """The child side: apply every batch read from ``requests``; answer each once its commit is on
    disk."""
    checkpointer = BackgroundCheckpointer(path, interval=CHECKPOINT_PASS_SECONDS)
    checkpointer.start()
    transaction = _Transactions(path, checkpointer)
    syncer = WalSyncer(path, answers)
    syncer.start()
    sql = event_sql("sqlite")
    batches: queue.SimpleQueue[Batch | None] = queue.SimpleQueue()
    reader = threading.Thread(target=_read_batches, args=(requests, batches), daemon=True)
    reader.start()
    inbox = _Inbox(batches)
    try:
        for number in itertools.count(1):
            if not (group := inbox.take()):
                break
            events = [planned for batch_events, _ in group for planned in batch_events]
            results = apply_with_recovery(transaction, sql, events, keep_order=group[0][1])
            start = 0
            for batch_events, _ in group:  # one answer per batch, in the order they were sent
                syncer.answer(encode_answer(results[start : start + len(batch_events)], transaction.commits))
                start += len(batch_events)
            syncer.check()
            transaction.finish_checkpoint()
            if number % GC_EVERY_TRANSACTIONS == 0:
                gc.collect()  # the rare cycles (an exception and its traceback) with the GC paused
    finally:
        syncer.stop()
        checkpointer.stop()
        transaction.close()


def _pause_cyclic_gc() -> None:
    """Plans are trees of tuples, lists and strings, freed by reference counting; but a merged batch
    holds hundreds of thousands of them, which the automatic collector would keep traversing."""
    gc.collect()
    gc.freeze()
    gc.disable()


if __name__ == "__main__":
    _pause_cyclic_gc()
    serve(sys.argv[1], sys.stdin.buffer, sys.stdout.buffer)
