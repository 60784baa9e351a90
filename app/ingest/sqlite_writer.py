"""A child process that owns the writes to one SQLite file, so planning and writing use two cores.

SQLite takes one writer at a time, and in one Python process the code that decodes and plans events
and the code that writes them share the GIL. The child, ``python -m app.ingest.sqlite_writer PATH``, reads
batches of planned events (app.ingest.apply.PlannedEvent, plain data) from a pipe, stores and applies the
batches queued up in one transaction with exactly the receiver's code (app.ingest.apply), commits, and sends
the results back while the parent is already planning more. Its parents: ``SqliteWriterProcess``
below (threads, for replays) and app.ingest.sqlite_committer (the event loop, for a receiver). WAL
checkpoints run on a thread of the child (BackgroundCheckpointer).

Nothing is answered before its commit is on disk: a batch's results leave only after the WAL
holding its commit was synced (WalSyncer).
The child imports the standard library and app.ingest.apply only, so it starts in a few milliseconds.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import marshal
import os
import pickle
import queue
import sqlite3
import struct
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from typing import IO, Any

from app.db.sqlite_setup import BackgroundCheckpointer, configure_connection
from app.ingest.apply import (
    DatabaseUnavailable,
    IngestResult,
    PlannedEvent,
    apply_with_recovery,
    event_sql,
    is_infrastructure_error,
)

Results = list[IngestResult | DatabaseUnavailable]
# A batch crosses the pipe in chunks: (planned events, keep the given order?, last chunk of the
# batch?). Small writes keep both sides moving: the child decodes one chunk while the parent plans
# the next.
# Batches that queued up while the child was writing are applied in one transaction, up to this many
# events: a busy writer commits less often, and each commit writes fewer pages per event.
MERGED_EVENTS = 10_000
CHUNK_EVENTS = 200
PIPE_BYTES = 1 << 20  # Linux lets a pipe hold 1 MiB (64 KiB by default): fewer waits on either side
MMAP_BYTES = 1 << 30
# The WAL must start over now and then: a WAL that only grows costs far more than copying its
# frames, since every frame appended past its end makes the kernel allocate and zero new file pages
# (half the writer's time under webhook load), whereas a WAL that restarts rewrites pages already in
# the page cache. SQLite restarts it when a write transaction begins after a checkpoint copied every
# frame. So a background thread copies the frames every CHECKPOINT_PASS_SECONDS (off the write path,
# on the other core), and once a pass found at least WAL_RESTART_FRAMES frames (16 MB), the writer
# copies the frames committed during that pass itself, between two transactions.
CHECKPOINT_PASS_SECONDS = 0.1
WAL_RESTART_FRAMES = 4000
GC_EVERY_TRANSACTIONS = 100
_DONE = None
# Both ways, values travel as frames (length, then the encoded value), so that an event loop can
# read them without blocking. Answers are pickled; batches are marshalled: plans are plain tuples,
# lists, strings and numbers, which marshal encodes and decodes a third faster than pickle (a few
# microseconds per event on each side), and both ends run the same interpreter. A plan marshal
# refuses (a value of another type) is pickled instead; a tag byte says which.
FRAME_HEADER = struct.Struct("!I")
MARSHALLED, PICKLED = b"m", b"p"


def frame(value: Any) -> bytes:
    payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return FRAME_HEADER.pack(len(payload)) + payload


def _read_exactly(stream: IO[bytes], size: int) -> bytes:
    data = stream.read(size)
    if len(data) < size:
        raise EOFError
    return data


def _next_payload(stream: IO[bytes]) -> bytes:
    """The payload of the next frame of ``stream``; EOFError at its end or in the middle of one."""
    (size,) = FRAME_HEADER.unpack(_read_exactly(stream, FRAME_HEADER.size))
    return _read_exactly(stream, size)


def read_frame(stream: IO[bytes]) -> Any:
    """The next framed (pickled) value of ``stream``."""
    return pickle.loads(_next_payload(stream))


def _request_frame(value: Any) -> tuple[bytes, bytes]:
    """A request frame in two pieces, the header (with the tag) and the encoded value, sent one
    after the other: joining them would copy a megabyte per chunk once more."""
    try:
        tag, payload = MARSHALLED, marshal.dumps(value)
    except ValueError:
        tag, payload = PICKLED, pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return FRAME_HEADER.pack(len(payload) + len(tag)) + tag, payload


def read_request(stream: IO[bytes]) -> Any:
    """The next value the parent sent (a chunk of a batch, or _DONE); EOFError at the end."""
    payload = _next_payload(stream)
    body = memoryview(payload)[1:]
    return marshal.loads(body) if payload[:1] == MARSHALLED else pickle.loads(body)


def encode_batch(events: Sequence[PlannedEvent], keep_order: bool) -> list[bytes]:
    """A batch as the child reads it, to be written in order: frames of at most CHUNK_EVENTS
    events, the last marked, each as its two pieces."""
    pieces: list[bytes] = []
    for start in range(0, max(len(events), 1), CHUNK_EVENTS):
        last = start + CHUNK_EVENTS >= len(events)
        # Plain tuples: marshal takes no tuple subclass (the child makes them PlannedEvents again).
        part = [tuple(planned) for planned in events[start : start + CHUNK_EVENTS]]
        pieces.extend(_request_frame((part, keep_order, last)))
    return pieces


DONE_FRAME = b"".join(_request_frame(None))


def _widen_pipe(pipe: IO[bytes] | None) -> None:
    try:
        import fcntl
    except ImportError:  # not a POSIX system: the default pipe size will do
        return
    if pipe is not None and hasattr(fcntl, "F_SETPIPE_SZ"):
        with contextlib.suppress(OSError):
            fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)


class WriterProcessError(RuntimeError):
    """The writer process ended or failed; what it reported is in the message."""


def start_child(path: str) -> subprocess.Popen[bytes]:
    """``python -m app.ingest.sqlite_writer PATH``, with pipes for its requests and its answers (both parents
    start it here)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "app.ingest.sqlite_writer", path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        # Not in the terminal's process group: Ctrl-C stops the parent, which then lets the child
        # finish the batches already sent (closing its stdin) instead of killing it mid-way.
        start_new_session=True,
    )
    _widen_pipe(process.stdin)
    return process


class SqliteWriterProcess:
    """The parent side: ``submit`` a batch, get a future of its results, resolved after its commit.

    The child reads its pipe on a thread of its own, so writing a batch rarely waits; results come
    back on a thread of this process, so a parent writing a batch never blocks a child sending
    results. The child answers batches in the order they were sent, so futures are resolved first
    in, first out. Safe to share between threads.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.commits = 0  # transactions the child committed, as it last reported
        self._child: subprocess.Popen[bytes] | None = None
        self._pending: deque[Future[Results]] = deque()
        self._lock = threading.Lock()  # one order for the pipe and the pending futures
        self._failure: WriterProcessError | None = None
        self._reader: threading.Thread | None = None

    def __enter__(self) -> SqliteWriterProcess:
        self._start()
        return self

    def _start(self) -> None:
        self._failure = None
        self._child = start_child(self.path)
        self._reader = threading.Thread(target=self._read_results, name="billing-mirror-writer-results")
        self._reader.start()

    def restart(self) -> None:
        """Start a new child if this one ended (several callers may ask: one restart happens)."""
        with self._lock:
            if self._failure is None:
                return  # alive, or already restarted by another caller
            if self._reader is not None:
                self._reader.join()  # it has recorded the failure: it only has to return
            self._start()

    def __exit__(self, *exc_info: object) -> None:
        """Let the child finish what was sent, then wait for it to end."""
        child = self._require_child()
        with self._lock, contextlib.suppress(BrokenPipeError):
            assert child.stdin is not None
            with child.stdin:
                child.stdin.write(DONE_FRAME)
        child.wait()
        if self._reader is not None:
            self._reader.join()

    def _require_child(self) -> subprocess.Popen[bytes]:
        if self._child is None:
            raise RuntimeError("SqliteWriterProcess is not started: use it in a with block")
        return self._child

    def submit(self, events: Sequence[PlannedEvent], *, keep_order: bool) -> Future[Results]:
        future: Future[Results] = Future()
        with self._lock:
            # The pipe is read under the lock: restart() may replace the child, and a batch written
            # to the old one would leave its future among the new child's, answered by the wrong batch.
            pipe = self._require_child().stdin
            assert pipe is not None
            if self._failure is not None:
                future.set_exception(self._failure)
                return future
            # Pending before the first byte is sent: the answer may come back before write() returns.
            self._pending.append(future)
            try:
                for chunk in encode_batch(events, keep_order):
                    pipe.write(chunk)
                pipe.flush()
            except BrokenPipeError:
                pass  # the child ended: the results reader fails every pending future, this one too
        return future

    def _read_results(self) -> None:
        child = self._require_child()
        assert child.stdout is not None
        reason = "ended"
        try:
            while True:
                try:
                    results, commits = read_frame(child.stdout)
                except EOFError:
                    break
                self.commits = commits
                self._pending.popleft().set_result(results)
        except Exception as exc:  # an unreadable answer: nobody may wait for ever
            reason = f"answered something unreadable ({type(exc).__name__}: {exc})"
            child.kill()
        code = child.wait()
        with self._lock:
            self._failure = WriterProcessError(
                f"the SQLite writer process {reason} (exit status {code}); its errors are above"
            )
            while self._pending:
                self._pending.popleft().set_exception(self._failure)


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
                # Index pages read through a memory map, not one read() each: at a few hundred
                # thousand events the writer otherwise spends a third of its time in those calls.
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
            raise WriterProcessError(f"could not sync or send answers: {self.failure}")

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
        while (chunk := read_request(requests)) is not _DONE:
            part, keep_order, last = chunk
            events.extend([new_plan(PlannedEvent, planned) for planned in part])
            if last:
                batches.put((events, keep_order))
                events = []
    except EOFError:  # the parent went away without saying goodbye: finish what is complete
        pass
    finally:
        batches.put(_DONE)


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
                syncer.answer(frame((results[start : start + len(batch_events)], transaction.commits)))
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
