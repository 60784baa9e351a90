"""Group commit: requests that arrive while a commit is in flight share the next one.

The event loop hands each verified event to a single writer thread and awaits its result; the
writer drains whatever is queued (up to ``max_batch``) into one transaction. Under load that turns
hundreds of fsyncs into a few, while every caller still learns its outcome only after the commit.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import Any

from app.envelope import Event
from app.ingest import EventStore, IngestResult

_STOP = object()


class IngestCrashed(Exception):
    """Ingestion raised something that is neither a handler failure nor a database outage."""


def _resolve(future: asyncio.Future[IngestResult], result: Any) -> None:
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


class GroupCommitter:
    def __init__(self, store: EventStore, max_batch: int = 256) -> None:
        self.store = store
        self.max_batch = max_batch
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
        for (_, loop, future), result in zip(batch, results, strict=True):
            try:
                loop.call_soon_threadsafe(_resolve, future, result)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass
