"""Group commit: requests that arrive while a commit is in flight share the next one.

The event loop hands each verified event to a single writer thread and awaits its result; the
writer drains whatever is queued (up to ``max_batch``) into one transaction. Under load that turns
hundreds of fsyncs into a few, while every caller still learns its outcome only after the commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from dataclasses import asdict, dataclass
from typing import Any

from app.envelope import Event
from app.ingest import EventStore, IngestResult

_STOP = object()


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
    """What the writer has done since start; only the writer thread updates it."""

    batches: int = 0  # ingest() calls, one transaction each unless the batch had to be redone
    events: int = 0
    largest_batch: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class GroupCommitter:
    def __init__(self, store: EventStore, max_batch: int = 256) -> None:
        self.store = store
        self.max_batch = max_batch
        self.stats = WriterStats()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="billing-mirror-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None

    async def submit(self, event: Event) -> IngestResult:
        if self._thread is None:
            raise RuntimeError("GroupCommitter is not started")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[IngestResult] = loop.create_future()
        self._queue.put((event, loop, future))
        return await future

    def _run(self) -> None:
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
        except Exception as exc:  # a bug, not the database: fail these requests, keep the writer alive
            results = [IngestCrashed(f"{type(exc).__name__}: {exc}")] * len(batch)
        self.stats.batches += 1
        self.stats.events += len(batch)
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        # One wake-up of each event loop per batch, not one per event: the loop thread competes
        # with this one for the GIL, and every call_soon_threadsafe writes to its self-pipe.
        answers: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[IngestResult], Any]]] = {}
        for (_, loop, future), result in zip(batch, results, strict=True):
            answers.setdefault(loop, []).append((future, result))
        for loop, loop_answers in answers.items():
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
                loop.call_soon_threadsafe(_resolve, loop_answers)
