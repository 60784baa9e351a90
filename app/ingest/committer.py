"""Group commit: requests that arrive while a commit is in flight share the next one.

The event loop hands each verified event to a writer thread and awaits its result; the writer
drains whatever is queued (up to ``max_batch``) into one transaction. Under load that turns
hundreds of fsyncs into a few, while every caller still learns its outcome only after the commit.

A delivery that finds nothing queued or being written (one at a time, as a quiet account's are) is
stored from the event loop itself when it takes one round trip (EventStore.ingest_on_loop), its
answer awaited while the loop reads the next requests, which go to the writers meanwhile.

Several writers can overlap: while one waits for PostgreSQL's answer (with the GIL released),
another plans its batch. Batches of different writers may touch the same rows; ingest orders its
writes and redoes a batch that hit a deadlock, as it does for several receiver processes. (A
receiver on a SQLite file uses app.ingest.sqlite_committer instead, on the event loop, with its
writer process.)
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable, Sized
from dataclasses import asdict, dataclass
from typing import Any, Protocol, Self

from app.ingest.apply import IngestResult, PlannedEvent
from app.ingest.plan import plan_refused
from app.ingest.store import Ingests, received_now
from app.mirror.envelope import Event

_STOP = object()
# Told of each batch stored: (events in it, transactions the writer committed so far); for metrics.
BatchHook = Callable[[int, int], None]


class IngestCrashed(Exception):
    """Ingestion raised something that is neither a handler failure nor a database outage."""


def _resolve(answers: list[tuple[asyncio.Future[IngestResult], Any]]) -> None:
    for future, result in answers:
        if future.done():  # the request was cancelled (client went away) while we committed
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)


@dataclass
class WriterStats:
    """What the writers have done since start (updated under the committer's lock)."""

    batches: int = 0  # ingest() calls, one transaction each unless the batch had to be redone
    events: int = 0
    largest_batch: int = 0
    on_loop: int = 0  # of the events, those stored from the event loop (a lone delivery)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class Committer(Protocol):
    """What the webhook endpoint hands events to: GroupCommitter, or SqliteCommitter on a SQLite file.

    Used as ``async with committer:``; on exit every event already submitted has been answered."""

    stats: WriterStats
    on_batch: BatchHook | None

    @property
    def commits(self) -> int: ...

    async def submit(self, event: Event) -> IngestResult: ...

    async def refuse(self, body: bytes, reason: str, message: str) -> IngestResult:
        """Store a verified body that is no storable event as a dead letter (outcome refused)."""
        ...

    def unavailable(self) -> str | None:
        """Why the writer cannot store deliveries now (for /readyz), or None when it can."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc_info: object) -> None: ...


class GroupCommitter:
    def __init__(self, store: Ingests, max_batch: int = 256, writers: int = 1) -> None:
        if writers < 1:
            raise ValueError("a GroupCommitter needs at least one writer")
        self.store = store
        self.max_batch = max_batch
        self.writers = writers
        self.stats = WriterStats()
        self.on_batch: BatchHook | None = None
        self._stats_lock = threading.Lock()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._unanswered = 0  # events submitted and not answered yet (read and written on the loop)

    @property
    def commits(self) -> int:
        return self.store.commits

    async def __aenter__(self) -> GroupCommitter:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.stop()  # the writers finish their batches; the loop resolves their futures afterwards
        self.store.release_loop_connection()

    def start(self) -> None:
        for number in range(self.writers):
            thread = threading.Thread(target=self._run, name=f"billing-mirror-writer-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        for _ in self._threads:
            self._queue.put(_STOP)  # each writer takes exactly one and finishes its batch first
        for thread in self._threads:
            thread.join()
        self._threads = []

    async def submit(self, event: Event | PlannedEvent) -> IngestResult:
        if not self._threads:
            raise RuntimeError("GroupCommitter is not started")
        self._unanswered += 1
        try:
            if self._unanswered == 1:  # no batch to join: stored from here if it takes one round trip
                stored = await self.store.ingest_on_loop(event)
                if isinstance(stored, IngestResult):
                    self._counted([stored], on_loop=True)
                    return stored
                event = stored
            loop = asyncio.get_running_loop()
            future: asyncio.Future[IngestResult] = loop.create_future()
            self._queue.put((event, loop, future))
            return await future
        finally:
            self._unanswered -= 1

    def unavailable(self) -> str | None:
        if not self._threads or not all(thread.is_alive() for thread in self._threads):
            return "the writer threads are not running"
        return None

    async def refuse(self, body: bytes, reason: str, message: str) -> IngestResult:
        dialect = self.store.dialect
        return await self.submit(plan_refused(body, reason, message, received_now(dialect)))

    def _run(self) -> None:
        with self.store.holding_a_connection():
            self._write_batches()

    def _counted(self, batch: Sized, *, on_loop: bool = False) -> None:
        """Count a batch stored (stats, then the ``on_batch`` hook)."""
        with self._stats_lock:
            self.stats.batches += 1
            self.stats.events += len(batch)
            self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
            if on_loop:
                self.stats.on_loop += len(batch)
        if self.on_batch is not None:
            self.on_batch(len(batch), self.store.commits)

    def _write_batches(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)
            self._commit(batch)

    def _commit(self, batch: list[Any]) -> None:
        results: list[Any]
        try:
            results = list(self.store.ingest([event for event, _, _ in batch]))
        except Exception as exc:  # a bug in the store itself: fail these requests, keep the writer alive
            results = [IngestCrashed(f"{type(exc).__name__}: {exc}")] * len(batch)
        self._counted(batch)
        # One wake-up of each event loop per batch, not one per event: the loop thread competes
        # with this one for the GIL, and every call_soon_threadsafe writes to its self-pipe.
        answers: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[IngestResult], Any]]] = {}
        for (_, loop, future), result in zip(batch, results, strict=True):
            answers.setdefault(loop, []).append((future, result))
        for loop, loop_answers in answers.items():
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
                loop.call_soon_threadsafe(_resolve, loop_answers)
