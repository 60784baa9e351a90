"""Group commit on the event loop, for a receiver writing to a SQLite file through its writer process.

Each request plans its event where it runs (on the loop: no thread, so no hand-over of the GIL) and
waits. Once per loop iteration, whatever was planned meanwhile is sent to the writer process
(app.ingest.sqlite_writer) as one batch, on the loop's own non-blocking pipe transports; and within an
iteration each time SEND_AT_EVENTS are waiting, so that the writer starts on the first events of a
wave of requests while the loop still plans the rest (milliseconds for a few dozen). The child applies
every batch that queued up in its pipe while it was writing in one transaction, so under load a
transaction holds every request that arrived during the previous commit, and the child never waits
for the loop. Each batch's answer comes back after its commit and only then resolves its requests'
futures: a 2xx still means committed.

If the child dies, the batches it held are answered DatabaseUnavailable (503: Stripe delivers them
again) and a new child takes the following ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Dialect

from app.ingest.apply import DatabaseUnavailable, IngestResult, PlannedEvent
from app.ingest.committer import BatchHook, WriterStats
from app.ingest.plan import plan_event, plan_refused
from app.ingest.store import received_now
from app.ingest.writer_process import WriterChild
from app.ingest.writer_protocol import FrameSplitter
from app.mirror.dispatch import Apply, apply_event
from app.mirror.envelope import Event

logger = logging.getLogger("billing_mirror")

# Planned events sent without waiting for the end of the loop iteration, so the writer starts on the
# first events of a wave while the loop plans the rest (bench/README.md has the measurements).
SEND_AT_EVENTS = 16
Waiter = asyncio.Future[IngestResult]


class _Answers(asyncio.Protocol):
    """Reads the child's framed answers and hands each to the committer."""

    def __init__(self, committer: SqliteCommitter, child: _Child) -> None:
        self.committer = committer
        self.child = child
        self.frames = FrameSplitter()

    def data_received(self, data: bytes) -> None:
        for payload in self.frames.feed(data):
            self.committer._answered(self.child, payload)

    def eof_received(self) -> bool | None:
        return None  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.committer._child_ended(self.child)


@dataclass(eq=False)
class _Child:
    link: WriterChild[list[Waiter]]
    requests: asyncio.WriteTransport | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)


class SqliteCommitter:
    """``await submit(event)``: the event's outcome, once the transaction that stored it committed.

    Use it as ``async with SqliteCommitter(...) as committer``: the writer child starts on entry; on
    exit everything already submitted is answered and the child ends."""

    def __init__(
        self, path: str, dialect: Dialect, *, max_batch: int = 256, apply: Apply = apply_event
    ) -> None:
        self.path = path
        self.dialect = dialect
        self.max_batch = max_batch
        self.apply = apply
        self.stats = WriterStats()
        self.on_batch: BatchHook | None = None
        self._queued: deque[tuple[PlannedEvent, Waiter]] = deque()
        self._child: _Child | None = None
        self._last_child: WriterChild[list[Waiter]] | None = None
        self._sending = False
        self._stopping = False
        self._received_tick, self._received_value = -1, None  # set by the first _received()
        self._restarting: asyncio.Task[None] | None = None  # held: the loop keeps only weak references

    @property
    def commits(self) -> int:
        return self._last_child.commits if self._last_child is not None else 0

    async def __aenter__(self) -> SqliteCommitter:
        await self._spawn()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stop()

    def _received(self) -> Any:
        """The receipt time, as the driver stores it, shared by the requests of one millisecond:
        converting it costs more than planning a small event."""
        tick = time.monotonic_ns() // 1_000_000
        if tick != self._received_tick:
            self._received_tick, self._received_value = tick, received_now(self.dialect)
        return self._received_value

    async def _spawn(self) -> None:
        link = WriterChild[list[Waiter]](self.path)
        child = _Child(link)
        loop = asyncio.get_running_loop()
        child.requests, _ = await loop.connect_write_pipe(asyncio.Protocol, link.requests)
        await loop.connect_read_pipe(lambda: _Answers(self, child), link.answers)
        self._child, self._last_child = child, link

    async def submit(self, event: Event) -> IngestResult:
        return await self._submit(plan_event(event, self.dialect, self._received(), self.apply))

    def unavailable(self) -> str | None:
        child = self._child
        if child is None or child.link.process.poll() is not None:
            return "the SQLite writer process is not running"
        return None

    async def refuse(self, body: bytes, reason: str, message: str) -> IngestResult:
        return await self._submit(plan_refused(body, reason, message, self._received()))

    async def _submit(self, planned: PlannedEvent) -> IngestResult:
        if self._stopping:
            raise DatabaseUnavailable("the receiver is shutting down")
        loop = asyncio.get_running_loop()
        waiter: Waiter = loop.create_future()
        self._queued.append((planned, waiter))
        if len(self._queued) >= SEND_AT_EVENTS:
            self._flush()
        elif not self._sending:
            # After the requests already runnable in this loop iteration have queued theirs too.
            self._sending = True
            loop.call_soon(self._send)
        return await waiter

    def _send(self) -> None:
        self._sending = False
        self._flush()

    def _flush(self) -> None:
        child = self._child
        if child is None or child.requests is None:
            return  # a new child is starting: it sends what is queued
        while self._queued:
            count = min(len(self._queued), self.max_batch)
            taken = [self._queued.popleft() for _ in range(count)]
            waiters = [waiter for _, waiter in taken]
            child.link.send(child.requests, [planned for planned, _ in taken], False, waiters)
            self.stats.batches += 1
            self.stats.events += count
            self.stats.largest_batch = max(self.stats.largest_batch, count)

    def _answered(self, child: _Child, payload: bytes) -> None:
        waiters, results = child.link.answered(payload)
        if self.on_batch is not None:
            self.on_batch(len(waiters), child.link.commits)
        for waiter, result in zip(waiters, results, strict=True):
            if waiter.done():  # the client went away meanwhile
                continue
            if isinstance(result, BaseException):
                waiter.set_exception(result)
            else:
                waiter.set_result(result)

    def _child_ended(self, child: _Child) -> None:
        loop = asyncio.get_running_loop()
        process = child.link.process
        code = process.poll()
        if code is None:  # its pipe closed an instant before it exited: reap it without blocking
            loop.run_in_executor(None, process.wait)
        message, waiting = child.link.ended("ended before answering", code)
        failure = DatabaseUnavailable(message)
        for waiters in waiting:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(failure)
        if child.requests is not None:
            child.requests.close()
        child.ended.set()
        if child is self._child and not self._stopping:
            logger.error("The SQLite writer process ended (exit status %s); starting a new one", code)
            self._child = None
            self._restarting = loop.create_task(self._restart(child.link.seconds_before_restart()))

    async def _restart(self, wait: float) -> None:
        if wait > 0:
            await asyncio.sleep(wait)
        try:
            await self._spawn()
        except Exception as exc:  # fail the queued requests, keep the server up
            logger.exception("Could not start the SQLite writer process")
            while self._queued:
                _, waiter = self._queued.popleft()
                if not waiter.done():
                    waiter.set_exception(DatabaseUnavailable(f"no SQLite writer process: {exc}"))
            return
        self._flush()

    async def _stop(self) -> None:
        """Send what is queued, then let the child answer everything it was sent and end."""
        self._flush()
        self._stopping = True
        child = self._child
        if child is None:
            return
        if child.requests is not None and not child.requests.is_closing():
            WriterChild.request_stop(child.requests)
        await child.ended.wait()
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.get_running_loop().run_in_executor(None, child.link.process.wait, 30)
