"""Group commit: requests that arrive while a commit is in flight share the next one. Under load that
turns hundreds of fsyncs into a few, while every caller still learns its outcome only after the
commit.

On PostgreSQL the event loop stores the deliveries itself (EventStore.ingest_on_loop): each is planned
where its request runs; one that finds nothing in flight is sent at once by its own request, and
those planned while a batch is in flight go, once it is answered, as the next batch (up to
``max_batch``), sent by a task of the committer. The loop awaits PostgreSQL's answers while it
serves the next requests and plans their events, so PostgreSQL writes one batch while the loop
prepares the next, with no hand-over to a thread and back.

The writer threads take the rest, draining their queue into one transaction at a time: a batch the
loop cannot store (its connection not known good right now, a failed attempt: nothing of it is
committed), which their careful path (app.ingest.apply) redoes; what is planned while a batch on the
loop takes longer than STALLED_SECONDS (it waits for a row another transaction holds, a slow disk),
so that it holds up no other; with ``batches_on_loop`` false (a receiver of several processes), every
delivery but a lone one; and, on any other database, every event. Batches of different
writers, or of a writer and the loop, may touch the same rows; ingest orders its writes and redoes a
batch that hit a deadlock, as it does for several receiver processes. (A receiver on a SQLite file
uses app.ingest.sqlite_committer instead, on the event loop, with its writer process.)
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable, Sized
from dataclasses import asdict, dataclass
from typing import Any, Protocol, Self

from app.ingest.apply import DatabaseUnavailable, IngestResult, PlannedEvent
from app.ingest.plan import plan_refused
from app.ingest.store import Ingests, received_now
from app.mirror.envelope import Event

_STOP = object()
# A batch on the event loop takes a few milliseconds; one still unanswered after this long waits for
# something (a lock, the disk), and the deliveries planned meanwhile go to the writer threads.
STALLED_SECONDS = 0.1
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
    on_loop: int = 0  # of the events, those stored from the event loop (EventStore.ingest_on_loop)

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
    def __init__(
        self, store: Ingests, max_batch: int = 256, writers: int = 1, *, batches_on_loop: bool = True
    ) -> None:
        if writers < 1:
            raise ValueError("a GroupCommitter needs at least one writer")
        self.store = store
        self.max_batch = max_batch
        self.writers = writers
        # False: only a lone delivery is stored from the loop, the rest by the writer threads (a
        # receiver of several processes, bench/README.md, tenth session).
        self.batches_on_loop = batches_on_loop
        self.stats = WriterStats()
        self.on_batch: BatchHook | None = None
        self._stats_lock = threading.Lock()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._unanswered = 0  # events submitted and not answered yet (read and written on the loop)
        # Planned on the loop, waiting for its sender (both only touched on the loop).
        self._loop_pending: list[tuple[PlannedEvent, asyncio.Future[IngestResult]]] = []
        self._loop_sending = False  # a batch is being stored from the loop, or its sender task runs
        self._loop_sender: asyncio.Task[None] | None = None  # that task (the loop keeps weak references)
        self._loop_stalled = False  # its batch has taken more than STALLED_SECONDS so far

    @property
    def commits(self) -> int:
        return self.store.commits

    async def __aenter__(self) -> GroupCommitter:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._loop_sender is not None:  # what the loop planned is stored, or handed to the writers
            await self._loop_sender
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
        loop = asyncio.get_running_loop()
        future: asyncio.Future[IngestResult] = loop.create_future()
        if not self.store.writes_on_loop:
            self._queue.put((event, loop, future))
            return await future
        self._unanswered += 1
        try:
            if self._loop_stalled or (not self.batches_on_loop and self._unanswered > 1):
                self._queue.put((event, loop, future))
                return await future
            return await self._on_loop(self.store.plan([event])[0], future, loop)
        finally:
            self._unanswered -= 1

    async def _on_loop(
        self, planned: PlannedEvent, future: asyncio.Future[IngestResult], loop: asyncio.AbstractEventLoop
    ) -> IngestResult:
        self._loop_pending.append((planned, future))
        if self._loop_sending:
            return await future  # the next batch
        # Nothing in flight: this request's own task sends it (a lone delivery, no task of its own);
        # what is planned meanwhile goes as the next batch, sent by a task of its own.
        self._loop_sending = True
        try:
            await self._send_a_batch(loop)
        finally:
            self._loop_sending = False
            if self._loop_pending:
                self._loop_sending = True
                self._loop_sender = loop.create_task(self._send_on_loop())
        return await future

    async def _send_on_loop(self) -> None:
        """Send what is planned on the loop, a batch at a time, until nothing is left."""
        loop = asyncio.get_running_loop()
        try:
            while self._loop_pending:
                await self._send_a_batch(loop)
        except BaseException:  # cancelled: what waits is answered, not left waiting for ever
            stopped = DatabaseUnavailable("the receiver stopped before storing the event")
            _resolve([(future, stopped) for _, future in self._loop_pending])
            self._loop_pending.clear()
            raise
        finally:
            self._loop_sending = False
            self._loop_sender = None

    async def _send_a_batch(self, loop: asyncio.AbstractEventLoop) -> None:
        """The oldest events planned on the loop, stored from it as one batch, or by the writer
        threads when the loop cannot store them."""
        batch = self._loop_pending[: self.max_batch]
        del self._loop_pending[: self.max_batch]
        stall = loop.call_later(STALLED_SECONDS, self._stalled_on_loop, loop)
        try:
            results = await self.store.ingest_on_loop([planned for planned, _ in batch])
        except Exception as exc:  # a bug in the store itself: fail these requests, go on
            crashed = IngestCrashed(f"{type(exc).__name__}: {exc}")
            _resolve([(future, crashed) for _, future in batch])
            return
        except BaseException:  # cancelled: nobody can say whether the batch was stored
            stopped = DatabaseUnavailable("the receiver stopped while storing the event")
            _resolve([(future, stopped) for _, future in batch])
            raise
        finally:
            stall.cancel()
            self._loop_stalled = False
        if results is None:
            self._to_writers(batch, loop)
            return
        self._counted(batch, on_loop=True)
        _resolve([(future, result) for (_, future), result in zip(batch, results, strict=True)])

    def _stalled_on_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """The batch on the loop is still unanswered: what waits for the loop, and what comes until
        that batch is answered, goes to the writer threads."""
        self._loop_stalled = True
        self._to_writers(self._loop_pending, loop)
        self._loop_pending = []

    def _to_writers(
        self, batch: list[tuple[PlannedEvent, asyncio.Future[IngestResult]]], loop: asyncio.AbstractEventLoop
    ) -> None:
        for planned, future in batch:
            self._queue.put((planned, loop, future))

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
