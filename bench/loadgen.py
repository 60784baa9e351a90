"""A small, cheap HTTP/1.1 load generator: C keep-alive connections over asyncio protocols.

Every connection sends one pre-built request, waits for the whole answer, records its latency and
status, and takes the next request. The same code drives every server of a run, so its own cost
(it shares the machine's cores with the server) weighs equally on the baseline and on the service.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast


@dataclass
class LoadResult:
    requests: int
    elapsed: float
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: int = 0  # connection failures and answers we could not read

    @property
    def ok(self) -> int:
        return sum(count for status, count in self.statuses.items() if 200 <= status < 300)

    @property
    def not_ok(self) -> int:
        return self.requests - self.ok

    @property
    def rate(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0

    def percentile(self, fraction: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class _Run:
    def __init__(self, requests: Sequence[bytes]) -> None:
        self.requests = requests
        self.next_index = 0
        self.pending = len(requests)
        self.result = LoadResult(requests=len(requests), elapsed=0.0)
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def take(self) -> bytes | None:
        if self.next_index >= len(self.requests):
            return None
        request = self.requests[self.next_index]
        self.next_index += 1
        return request

    def finish_one(self) -> None:
        self.pending -= 1
        if self.pending == 0 and not self.done.done():
            self.done.set_result(None)


class _Connection(asyncio.Protocol):
    def __init__(self, run: _Run, reconnect: asyncio.Event) -> None:
        self.run = run
        self.reconnect = reconnect
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.sent_at = 0.0
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence no isinstance check.
        self.transport = cast(asyncio.Transport, transport)
        self.send_next()

    def send_next(self) -> None:
        request = self.run.take()
        if request is None or self.transport is None:
            if self.transport is not None:
                self.transport.close()
            return
        self.busy = True
        self.sent_at = time.perf_counter()
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        header_end = self.buffer.find(b"\r\n\r\n")
        if header_end < 0:
            return
        head = bytes(self.buffer[:header_end]).lower()
        marker = head.find(b"content-length:")
        if marker < 0:  # we only expect sized answers; anything else is an error of the server
            self._fail()
            return
        line_end = head.find(b"\r\n", marker)
        length = int(head[marker + 15 : line_end if line_end >= 0 else len(head)])
        total = header_end + 4 + length
        if len(self.buffer) < total:
            return
        status = int(head[9:12])
        del self.buffer[:total]
        self.busy = False
        self.run.result.latencies.append(time.perf_counter() - self.sent_at)
        self.run.result.statuses[status] += 1
        self.run.finish_one()
        if b"connection: close" in head:
            if self.transport is not None:
                self.transport.close()
            self.reconnect.set()
            return
        self.send_next()

    def _fail(self) -> None:
        if self.busy:
            self.busy = False
            self.run.result.errors += 1
            self.run.finish_one()
        if self.transport is not None:
            self.transport.close()
        self.reconnect.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.busy:
            self._fail()


async def drive(host: str, port: int, requests: Sequence[bytes], concurrency: int) -> LoadResult:
    """Send every request once over ``concurrency`` keep-alive connections; return what came back."""
    loop = asyncio.get_running_loop()
    run = _Run(requests)
    reconnect = asyncio.Event()
    started = time.perf_counter()

    async def open_one() -> None:
        try:
            await loop.create_connection(lambda: _Connection(run, reconnect), host, port)
        except OSError:
            # The request this connection would have sent is still queued: count a failure and move on.
            request = run.take()
            if request is not None:
                run.result.errors += 1
                run.finish_one()

    async def keep_connections_open() -> None:
        while not run.done.done():
            await reconnect.wait()
            reconnect.clear()
            if run.next_index < len(run.requests):
                await open_one()

    if not requests:
        return run.result
    await asyncio.gather(*(open_one() for _ in range(min(concurrency, len(requests)))))
    keeper = asyncio.create_task(keep_connections_open())
    await run.done
    run.result.elapsed = time.perf_counter() - started
    keeper.cancel()
    return run.result
