"""The Stripe test server (tests/stripe_server) in a process of its own, loaded with many objects.

    python -m bench.stripe_server_process [--items 1000000] [--events 100000] [--invoices 0] [--seed 2026]

Builds the objects as JSON bytes from one template each (ids that do not sort by time, several
objects per second: 1 to 7, 4 on average), loads them with ``Store.load_serialized`` (sorted once),
binds a free port of 127.0.0.1 and prints one line to stdout, ``READY <json>`` (the port, the time
ranges of the data, how long loading took), then serves with uvicorn (uvloop, httptools, no access
log) until it is terminated. Nothing else is printed to stdout.

The server answers Stripe's endpoints exactly as in the tests, except that it keeps no request log
(a benchmark sends tens of thousands of requests). Its own endpoints, under ``/_bench/``, are for the
benchmark only:

- ``POST /_bench/reset?rate=R``: Stripe's rate limiter at R requests/s (in all, and per endpoint) or
  off (``rate=0``), and the counters below set to zero;
- ``GET /_bench/stats``: since the last reset, requests answered by status and by endpoint, the
  monotonic time (shared by the processes of one machine) of the first and the last answer, and the
  CPU seconds of this process; its peak RSS;
- ``GET /_bench/page_cost?pages=300``: CPU per 100-object page of ``/v1/invoiceitems`` (the whole
  ASGI request, in process, without HTTP), pages at random cursors in ``created`` windows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import resource
import socket
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import orjson
import uvicorn
import uvloop

from tests.stripe_server import objects
from tests.stripe_server.app import API_VERSION, StripeServer
from tests.stripe_server.faults import LoggedRequest, RequestLog
from tests.stripe_server.store import EVENTS, INVOICE_ITEMS, INVOICES

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
HOST = "127.0.0.1"
CUSTOMERS = 20_000
# Placeholder values of the templates: each occurs nowhere else in a template's JSON.
SENTINEL_TIME = 1_111_111_111

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


# ---- objects as bytes --------------------------------------------------------------------------


class Template:
    """JSON bytes with named slots: ``render({b"id": b"ii_..."})`` is one %-format of bytes."""

    def __init__(self, body: bytes, slots: dict[bytes, bytes]) -> None:
        text = body.replace(b"%", b"%%")
        for literal, name in slots.items():
            if literal not in text:
                raise ValueError(f"{literal!r} is not in the template")
            text = text.replace(literal, b"%(" + name + b")s")
        self.text = text

    def render(self, values: dict[bytes, bytes]) -> bytes:
        return self.text % values


def seconds_of(count: int, rng: random.Random) -> Iterator[int]:
    """For ``count`` objects, the offset in seconds of each: 1 to 7 objects per second (4 on average)."""
    second = 0
    left = count
    while left > 0:
        here = min(left, rng.randint(1, 7))
        for _ in range(here):
            yield second
        left -= here
        second += 1


def span_seconds(count: int, seed: int) -> int:
    """How many seconds ``count`` objects from ``seconds_of`` span."""
    offsets = seconds_of(count, random.Random(seed))
    return max(offsets, default=-1) + 1


def random_ids(prefix: str, count: int, rng: random.Random) -> list[bytes]:
    """``count`` distinct ids of 24 hexadecimal digits after the prefix, in no order of time."""
    seen: set[int] = set()
    ids: list[bytes] = []
    while len(ids) < count:
        value = rng.getrandbits(96)
        if value not in seen:
            seen.add(value)
            ids.append(b"%s_%024x" % (prefix.encode(), value))
    return ids


def invoice_item_rows(count: int, start: int, seed: int) -> list[tuple[int, str, bytes]]:
    """(date, id, JSON) of ``count`` pending invoice items from ``start`` on, among 20,000 customers."""
    rng = random.Random(seed)
    template = Template(
        orjson.dumps(
            {**objects.invoice_item(date=SENTINEL_TIME, customer="cus_CUSTOMERxxxxxx"), "id": "ii_IDxxxxxxxx"}
        ),
        {b"ii_IDxxxxxxxx": b"id", b"cus_CUSTOMERxxxxxx": b"customer", b"%d" % SENTINEL_TIME: b"date"},
    )
    customers = [b"cus_%014d" % number for number in range(CUSTOMERS)]
    rows: list[tuple[int, str, bytes]] = []
    ids = random_ids("ii", count, rng)
    for number, offset in enumerate(seconds_of(count, rng)):
        date = start + offset
        object_id = ids[number]
        body = template.render(
            {b"id": object_id, b"customer": customers[number % CUSTOMERS], b"date": b"%d" % date}
        )
        rows.append((date, object_id.decode(), body))
    return rows


def invoice_rows(count: int, start: int, seed: int) -> list[tuple[int, str, bytes]]:
    """(created, id, JSON) of ``count`` paid invoices of three lines each (embedded, ``has_more``
    false, so a sync needs no request for lines)."""
    rng = random.Random(seed)
    obj = objects.invoice(created=SENTINEL_TIME, status="paid", lines=3, customer="cus_CUSTOMERxxxxxx")
    obj["id"] = "in_IDxxxxxxxx"
    obj["lines"]["url"] = "/v1/invoices/in_IDxxxxxxxx/lines"
    slots = {b"in_IDxxxxxxxx": b"id", b"cus_CUSTOMERxxxxxx": b"customer", b"%d" % SENTINEL_TIME: b"created"}
    for position, line in enumerate(obj["lines"]["data"]):
        line["invoice"] = "in_IDxxxxxxxx"
        line["id"] = f"il_LINE{position}xxxxxx"
        line["parent"]["invoice_item_details"]["invoice_item"] = f"ii_ITEM{position}xxxxxx"
        slots[f"il_LINE{position}xxxxxx".encode()] = b"line%d" % position
        slots[f"ii_ITEM{position}xxxxxx".encode()] = b"item%d" % position
    template = Template(orjson.dumps(obj), slots)
    ids = random_ids("in", count, rng)
    line_ids = random_ids("il", 3 * count, rng)
    item_ids = random_ids("ii", 3 * count, rng)
    rows: list[tuple[int, str, bytes]] = []
    for number, offset in enumerate(seconds_of(count, rng)):
        created = start + offset
        values = {
            b"id": ids[number],
            b"customer": b"cus_%014d" % (number % CUSTOMERS),
            b"created": b"%d" % created,
        }
        for position in range(3):
            values[b"line%d" % position] = line_ids[3 * number + position]
            values[b"item%d" % position] = item_ids[3 * number + position]
        rows.append((created, ids[number].decode(), template.render(values)))
    return rows


def _event_template(name: str) -> Template:
    """A recorded delivery of tests/fixtures with its event id, its object's ids and its ``created``
    as slots."""
    event = json.loads((FIXTURES / name).read_text())
    event["created"] = SENTINEL_TIME
    text = orjson.dumps(event)
    slots = {b"%d" % SENTINEL_TIME: b"created"}
    found = set(re.findall(rb'"((?:evt|in|il|ii|inpay)_[A-Za-z0-9]{14,})"', text))
    for literal in sorted(found):
        slots[literal] = literal.split(b"_")[0]
    return Template(text, slots)


def event_rows(count: int, start: int, seed: int) -> list[tuple[int, str, bytes]]:
    """(created, id, JSON) of ``count`` events, a third each ``invoiceitem.created``,
    ``invoice_payment.paid`` and ``invoice.paid`` (one line, an embedded payment), from tests/fixtures,
    every event about objects of its own."""
    rng = random.Random(seed)
    templates = [
        _event_template(name)
        for name in ("invoiceitem.created.json", "invoice_payment.paid.json", "invoice.paid.json")
    ]
    ids = {prefix: random_ids(prefix, count, rng) for prefix in ("evt", "in", "il", "ii", "inpay")}
    rows: list[tuple[int, str, bytes]] = []
    for number, offset in enumerate(seconds_of(count, rng)):
        created = start + offset
        values = {prefix.encode(): values[number] for prefix, values in ids.items()}
        values[b"created"] = b"%d" % created
        body = templates[number % 3].render(values)
        rows.append((created, ids["evt"][number].decode(), body))
    return rows


# ---- the server ---------------------------------------------------------------------------------


class NoLog(RequestLog):
    """The request log of the tests, kept empty: a benchmark's requests would only fill memory."""

    def append(self, entry: LoggedRequest) -> None:
        return None


@dataclass
class Counters:
    statuses: Counter[int] = field(default_factory=Counter)
    endpoints: Counter[str] = field(default_factory=Counter)
    first: float | None = None
    last: float | None = None
    cpu_at_reset: float = 0.0
    reset_at: float = field(default_factory=time.monotonic)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class BenchServer:
    """The StripeServer's ASGI app, counted, with the ``/_bench/`` control endpoints beside it."""

    def __init__(self, server: StripeServer, facts: dict[str, Any]) -> None:
        self.server = server
        self.facts = facts
        self.counters = Counters(cpu_at_reset=cpu_seconds())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] == "http" and path.startswith("/_bench/"):
            await self._control(scope, send)
            return
        status = 0

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        await self.server.app(scope, receive, counting_send)
        now = time.monotonic()
        counters = self.counters
        counters.statuses[status] += 1
        counters.endpoints[path if path.count("/") <= 2 else path.rsplit("/", 1)[0] + "/{id}"] += 1
        if counters.first is None:
            counters.first = now
        counters.last = now

    async def _control(self, scope: Scope, send: Send) -> None:
        query = {key: values[-1] for key, values in parse_qs(scope["query_string"].decode()).items()}
        action = scope["path"].removeprefix("/_bench/")
        if action == "reset":
            rate = float(query.get("rate", "0"))
            if rate > 0:
                self.server.rate_limits.enable(global_rate=rate, endpoint_rate=rate)
            else:
                self.server.rate_limits.disable()
            self.counters = Counters(cpu_at_reset=cpu_seconds())
            body: dict[str, Any] = {"rate": rate}
        elif action == "stats":
            counters = self.counters
            body = {
                "statuses": {str(status): count for status, count in counters.statuses.items()},
                "endpoints": dict(counters.endpoints),
                "requests": sum(counters.statuses.values()),
                "first": counters.first,
                "last": counters.last,
                "cpu_seconds": cpu_seconds() - counters.cpu_at_reset,
                "wall_seconds": time.monotonic() - counters.reset_at,
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        elif action == "facts":
            body = self.facts
        elif action == "page_cost":
            body = await self._page_cost(int(query.get("pages", "300")))
        else:
            body = {"error": f"unknown control {action}"}
        payload = orjson.dumps(body)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", b"%d" % len(payload)),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    async def _page_cost(self, pages: int) -> dict[str, Any]:
        """CPU per page of /v1/invoiceitems through the whole ASGI app, at random cursors, each in a
        ``created`` window from the cursor's second to the end (as a sync's windows are)."""
        collection = self.server.store.account().collections[INVOICE_ITEMS]
        if len(collection) == 0:
            return {"pages": 0}
        records = collection._records  # the benchmark looks inside: cursors spread over the whole list
        rng = random.Random(7)
        chosen = [records[rng.randrange(len(records))] for _ in range(pages)]
        auth = f"Bearer {self.server.config.api_keys[0]}".encode()

        async def get(query: bytes) -> bytes:
            chunks: list[bytes] = []

            async def receive() -> Message:
                return {"type": "http.request", "body": b"", "more_body": False}

            async def send(message: Message) -> None:
                if message["type"] == "http.response.body":
                    chunks.append(message.get("body", b""))

            scope = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": "GET",
                "scheme": "http",
                "path": "/v1/invoiceitems",
                "raw_path": b"/v1/invoiceitems",
                "query_string": query,
                "root_path": "",
                "headers": [
                    (b"authorization", auth),
                    (b"stripe-version", API_VERSION.encode()),
                    (b"host", b"127.0.0.1"),
                ],
                "server": (HOST, 80),
                "client": (HOST, 1),
            }
            await self.server.app(scope, receive, send)
            return b"".join(chunks)

        low = records[0].key[0]
        high = records[-1].key[0] + 1
        queries = [
            b"limit=100&created[gte]=%d&created[lt]=%d&starting_after=%s"
            % (low, max(record.key[0], low) + 1, record.id.encode())
            for record in chosen
        ]
        await get(b"limit=100")
        started = time.process_time()
        sizes = 0
        for query in queries:
            sizes += len(await get(query))
        cpu = time.process_time() - started
        return {
            "pages": pages,
            "cpu_us_per_page": cpu / pages * 1e6,
            "mean_page_bytes": sizes / pages,
            "objects": len(collection),
            "range": [low, high],
        }


def build(items: int, invoices: int, events: int, seed: int) -> tuple[StripeServer, dict[str, Any]]:
    """A StripeServer holding the objects, and what the benchmark needs to know about them."""
    started = time.perf_counter()
    server = StripeServer()
    server.log = NoLog()
    now = int(time.time())
    facts: dict[str, Any] = {"items": items, "invoices": invoices, "events": events}
    # Everything ends an hour ago: the sync's windows stop at Stripe's clock, which is now.
    if items:
        start = now - 3600 - span_seconds(items, seed)
        server.store.load_serialized(INVOICE_ITEMS, invoice_item_rows(items, start, seed))
        facts["items_first"] = start
    if invoices:
        start = now - 3600 - span_seconds(invoices, seed + 1)
        server.store.load_serialized(INVOICES, invoice_rows(invoices, start, seed + 1))
        facts["invoices_first"] = start
    if events:
        # Within Stripe's 30 days of events, ending ten minutes ago.
        start = now - 600 - span_seconds(events, seed + 2)
        server.store.load_serialized(EVENTS, event_rows(events, start, seed + 2))
        for record in server.store.account().collections[EVENTS]._records:
            record.obj  # parsed once now, as every event list filter would parse it on first use # noqa: B018
        facts["events_first"] = start
    account = server.store.account()
    for name, wanted in ((INVOICE_ITEMS, items), (INVOICES, invoices), (EVENTS, events)):
        if len(account.collections[name]) != wanted:
            raise RuntimeError(f"{name}: {len(account.collections[name])} loaded instead of {wanted}")
    facts["load_seconds"] = round(time.perf_counter() - started, 2)
    return server, facts


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--invoices", type=int, default=0)
    parser.add_argument("--events", type=int, default=0)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    server, facts = build(args.items, args.invoices, args.events, args.seed)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))
    facts["port"] = sock.getsockname()[1]
    facts["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    bench = BenchServer(server, facts)
    config = uvicorn.Config(
        bench,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        log_level="warning",
        access_log=False,
        date_header=False,  # the app sets Date from its own clock
        server_header=False,
        backlog=256,
    )
    http_server = uvicorn.Server(config)

    async def run() -> None:
        serving = asyncio.ensure_future(http_server.serve(sockets=[sock]))
        while not http_server.started:
            if serving.done():
                serving.result()
                return
            await asyncio.sleep(0.01)
        sys.stdout.write("READY " + json.dumps(facts) + "\n")
        sys.stdout.flush()
        await serving

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run())


if __name__ == "__main__":
    main()
