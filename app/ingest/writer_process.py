"""Starting, restarting and stopping the SQLite writer child, once for both of its parents: the
replay's thread-based SqliteWriterProcess (below) and the receiver's event-loop SqliteCommitter
(app.ingest.sqlite_committer). What crosses the pipes is app.ingest.writer_protocol.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from typing import IO, Generic, Protocol, TypeVar

from app.ingest.apply import PlannedEvent
from app.ingest.writer_protocol import DONE_FRAME, Results, decode_answer, encode_batch, read_payload

PIPE_BYTES = 1 << 20  # Linux lets a pipe hold 1 MiB (64 KiB by default): fewer waits on either side
# A child that keeps dying right away (it cannot even start) is not restarted more often than this.
RESTART_INTERVAL_SECONDS = 1.0
Waiter = TypeVar("Waiter")


class WriterProcessError(RuntimeError):
    """The writer process ended or failed; what it reported is in the message."""


class Sink(Protocol):
    """Where requests are written: the child's stdin itself, or an event loop's transport over it."""

    def writelines(self, data: Iterable[bytes], /) -> None: ...

    def write(self, data: bytes, /) -> object: ...

    def close(self) -> None: ...


def _widen_pipe(pipe: IO[bytes] | None) -> None:
    try:
        import fcntl
    except ImportError:  # not a POSIX system: the default pipe size will do
        return
    if pipe is not None and hasattr(fcntl, "F_SETPIPE_SZ"):
        with contextlib.suppress(OSError):
            fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)


class WriterChild(Generic[Waiter]):
    """One started ``python -m app.ingest.sqlite_writer PATH`` and the waiters of the batches sent to
    it, answered first in, first out (the child answers batches in the order they came)."""

    def __init__(self, path: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.ingest.sqlite_writer", path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            # Not in the terminal's process group: Ctrl-C stops the parent, which then lets the child
            # finish the batches already sent (closing its stdin) instead of killing it mid-way.
            start_new_session=True,
        )
        _widen_pipe(self.process.stdin)
        self.started_at = time.monotonic()
        self.commits = 0  # transactions the child committed, as it last reported
        self._waiting: deque[Waiter] = deque()

    @property
    def requests(self) -> IO[bytes]:
        assert self.process.stdin is not None
        return self.process.stdin

    @property
    def answers(self) -> IO[bytes]:
        assert self.process.stdout is not None
        return self.process.stdout

    def send(self, sink: Sink, events: Sequence[PlannedEvent], keep_order: bool, waiter: Waiter) -> None:
        # Waiting before the first byte is sent: the answer may come back before the write returns.
        self._waiting.append(waiter)
        sink.writelines(encode_batch(events, keep_order))

    def answered(self, payload: bytes) -> tuple[Waiter, Results]:
        """The waiter of the oldest batch sent, and its results."""
        results, self.commits = decode_answer(payload)
        return self._waiting.popleft(), results

    def ended(self, reason: str, code: int | None) -> tuple[str, list[Waiter]]:
        """Once its answers closed: what to tell the waiters nobody will answer now, and those waiters."""
        waiting = list(self._waiting)
        self._waiting.clear()
        return f"the SQLite writer process {reason} (exit status {code}); its errors are above", waiting

    @staticmethod
    def request_stop(sink: Sink) -> None:
        """Let the child finish every batch sent, answer them and end."""
        with contextlib.suppress(BrokenPipeError):
            sink.write(DONE_FRAME)
            sink.close()

    def seconds_before_restart(self) -> float:
        return max(0.0, self.started_at + RESTART_INTERVAL_SECONDS - time.monotonic())


class SqliteWriterProcess:
    """The replay's parent: ``submit`` a batch, get a future of its results, resolved after its commit.

    The child reads its pipe on a thread of its own, so writing a batch rarely waits; results come
    back on a thread of this process, so a parent writing a batch never blocks a child sending
    results. Safe to share between threads.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._child: WriterChild[Future[Results]] | None = None
        self._lock = threading.Lock()  # one order for the pipe and the waiting futures
        self._failure: WriterProcessError | None = None
        self._reader: threading.Thread | None = None

    @property
    def commits(self) -> int:
        return self._child.commits if self._child is not None else 0

    def __enter__(self) -> SqliteWriterProcess:
        self._start()
        return self

    def _start(self) -> None:
        self._failure = None
        self._child = child = WriterChild[Future[Results]](self.path)
        self._reader = threading.Thread(
            target=self._read_results, args=(child,), name="billing-mirror-writer-results"
        )
        self._reader.start()

    def restart(self) -> None:
        """Start a new child if this one ended (several callers may ask: one restart happens)."""
        with self._lock:
            if self._failure is None:
                return  # alive, or already restarted by another caller
            if self._reader is not None:
                self._reader.join()  # it has recorded the failure: it only has to return
            time.sleep(self._require_child().seconds_before_restart())
            self._start()

    def __exit__(self, *exc_info: object) -> None:
        """Let the child finish what was sent, then wait for it to end."""
        child = self._require_child()
        with self._lock:
            WriterChild.request_stop(child.requests)
        child.process.wait()
        if self._reader is not None:
            self._reader.join()

    def _require_child(self) -> WriterChild[Future[Results]]:
        if self._child is None:
            raise RuntimeError("SqliteWriterProcess is not started: use it in a with block")
        return self._child

    def submit(self, events: Sequence[PlannedEvent], *, keep_order: bool) -> Future[Results]:
        future: Future[Results] = Future()
        with self._lock:
            # The child is read under the lock: restart() may replace it, and a batch written to the
            # old one would leave its future among the new child's, answered by the wrong batch.
            child = self._require_child()
            if self._failure is not None:
                future.set_exception(self._failure)
                return future
            try:
                child.send(child.requests, events, keep_order, future)
                child.requests.flush()
            except BrokenPipeError:
                pass  # the child ended: the results reader fails every waiting future, this one too
        return future

    def _read_results(self, child: WriterChild[Future[Results]]) -> None:
        reason = "ended"
        try:
            while True:
                try:
                    payload = read_payload(child.answers)
                except EOFError:
                    break
                future, results = child.answered(payload)
                future.set_result(results)
        except Exception as exc:  # an unreadable answer: nobody may wait for ever
            reason = f"answered something unreadable ({type(exc).__name__}: {exc})"
            child.process.kill()
        code = child.process.wait()
        with self._lock:
            message, waiting = child.ended(reason, code)
            self._failure = WriterProcessError(message)
            for future in waiting:
                future.set_exception(self._failure)
