"""``billing-mirror sync``: backfill the mirror from Stripe's list endpoints, resumably.

Each resource is read in windows of its ``created`` filter (one window when the list has none). A
window is paged newest first with ``starting_after`` inside its own filter only (a cursor is never
carried to another filter: stripe-api-sync.md §1.1). When a window's page shows more to come and
threads are idle, the window ends there: what it has not read lies at or below the page's oldest
second, and that range is cut into new windows fetched from scratch, in parallel (the objects of
that boundary second already read are read once more, never one missed). The cuts grow older
geometrically from the boundary, starting at FIRST_WINDOW_PAGES times the time span of the page
itself, so windows follow the density of the data and hold several pages each.

Threads fetch pages (under the reader's limits), turn each into one snapshot event
(app.mirror.snapshots) and plan it, with the page's checkpoint as ``after`` writes, so the page and
its checkpoint commit together; the calling thread hands them to the store, the pages that arrived
meanwhile in one transaction. Invoices come with every line (pages of
``/v1/invoices/{id}/lines`` for those whose embedded list ``has_more``) and, when invoice payments
are not synced themselves, with their payments.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import Dialect, Engine, select

from app.db.models import StripeEvent
from app.ingest.apply import DatabaseUnavailable, IngestResult, PlannedEvent
from app.mirror.envelope import Event, EventSource
from app.mirror.outcome import Outcome
from app.mirror.upsert import table_of
from app.sync.checkpoints import Checkpoints, Window, page_checkpoint
from app.sync.fetch import ListPage, StripeReader, complete_invoice
from app.sync.resources import INVOICE_PAYMENTS, INVOICES, Resource, fetched_snapshot

logger = logging.getLogger("billing_mirror.sync")

Results = list[IngestResult | DatabaseUnavailable]
DEFAULT_THREADS = 8
MAX_SPLIT = 16
# A cut's first window spans this many pages' worth of seconds (at the density of the page that
# caused it): each window ends with a partial page, so windows of one page read 80 objects a request,
# of eight 95 and of sixteen 97.6 (bench/README.md, sync backfill).
FIRST_WINDOW_PAGES = 16
# Pages handed to the store before their answers are read (the SQLite writer process pipelines them).
IN_FLIGHT_PAGES = 8
# Pages fetched while the store was busy are committed together, up to this many a transaction: on
# PostgreSQL each commit costs two round trips and a WAL flush whatever its size (bench/README.md).
PAGES_PER_COMMIT = 8


class PlanningStore(Protocol):
    """What a backfill writes through: app.ingest.store.EventStore or WriterProcessStore."""

    def plan(self, events: Sequence[Event]) -> list[PlannedEvent]: ...

    def ingest_planned_in_order(self, batches: Any, *, in_flight_events: int = ...) -> Iterator[Results]: ...


class SyncFailed(RuntimeError):
    """The sync stopped; what was applied is checkpointed, and running it again continues."""


@dataclass
class Progress:
    """What one resource's backfill has done so far (read by the progress display)."""

    resource: Resource
    objects: int = 0
    pages: int = 0
    windows_open: int = 0
    windows_done: int = 0
    applied: int = 0  # pages that changed the mirror
    stale: int = 0  # pages the mirror already had (or newer)
    failed: int = 0  # pages stored as failed events (`billing-mirror events retry` applies them again)
    refreshed: int = 0  # objects read again after a same-second tie with an event
    started: float = field(default_factory=time.monotonic)
    finished: bool = False
    already_synced: bool = False
    covered: int = 0  # seconds of `created` read through in all windows
    remaining: int = 0  # seconds of `created` still to read in the open windows

    def estimate_seconds(self, elapsed: float) -> float | None:
        """Time left, from the density of objects in the `created` range read so far (None: unknown)."""
        if self.finished:
            return 0.0
        if not self.resource.created_filter or self.pages < 3 or self.covered <= 0 or elapsed <= 0:
            return None
        left = self.objects / self.covered * self.remaining
        rate = self.objects / elapsed
        return left / rate if rate > 0 else None


@dataclass
class _Fetched:
    """A page read by a fetch thread, ready to apply: its snapshot event planned, with its checkpoint."""

    resource: Resource
    planned: PlannedEvent
    objects: int
    window: Window  # as it stands after this page
    new_windows: list[Window]
    fetched_at: int
    object_ids: list[str]


@dataclass
class _Scheduler:
    """The windows to fetch, shared by the fetch threads; counts what is still open per resource."""

    threads: int
    queue: queue.Queue[Window | None] = field(default_factory=queue.Queue)
    open: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, window: Window) -> None:
        with self.lock:
            self.open[window.resource] = self.open.get(window.resource, 0) + 1
        self.queue.put(window)

    def idle(self) -> int:
        with self.lock:
            return max(0, self.threads - sum(self.open.values()))

    def close(self, resource: str) -> bool:
        """A window of ``resource`` is done; True when it was the last one of all resources."""
        with self.lock:
            self.open[resource] -= 1
            return sum(self.open.values()) == 0


def split(resource: str, low: int, high: int, step: int, count: int) -> list[Window]:
    """[low, high) cut into at most ``count`` windows, newest first: the first ``step`` seconds long,
    each next one twice as long as the one before, the last one down to ``low``."""
    windows: list[Window] = []
    top, size = high, max(1, step)
    while top > low and len(windows) < count:
        bottom = low if len(windows) == count - 1 else max(low, top - size)
        windows.append(Window(resource, bottom, top))
        top, size = bottom, size * 2
    return windows


class Backfill:
    """One sync run over some resources of one account."""

    def __init__(
        self,
        reader: StripeReader,
        engine: Engine,
        store: PlanningStore,
        *,
        threads: int = DEFAULT_THREADS,
        origin: EventSource = EventSource.SYNC,
        on_progress: Callable[[list[Progress]], None] | None = None,
    ) -> None:
        self.reader = reader
        self.engine = engine
        self.store = store
        self.threads = max(1, threads)
        self.origin = origin
        self.on_progress = on_progress
        self.account = reader.api.stripe_account
        self.checkpoints = Checkpoints(engine, self.account)
        self.dialect: Dialect = engine.dialect
        self.progress: dict[str, Progress] = {}
        self._expand_payments = False
        self._stop = threading.Event()
        self._fetched_seconds: dict[str, set[int]] = {}
        # Per resource: open window span -> (position, created_gte); the oldest object seen.
        self._coverage: dict[str, dict[str, tuple[int, int | None]]] = {}
        self._floor: dict[str, int] = {}

    # -- the run -------------------------------------------------------------------------------

    def run(self, resources: Sequence[Resource], *, full: bool = False) -> list[Progress]:
        self._expand_payments = INVOICE_PAYMENTS not in resources
        scheduler = _Scheduler(self.threads)
        for resource in resources:
            progress = self.progress[resource.name] = Progress(resource)
            finished, windows = self.checkpoints.begin(resource.name, Window(resource.name), full=full)
            if finished:
                progress.already_synced = progress.finished = True
                continue
            state = self.checkpoints.state(resource.name)
            progress.objects = state.objects if state else 0
            done, _ = self.checkpoints.window_count(resource.name)
            progress.windows_done = done
            progress.windows_open = len(windows)
            if not windows:  # every window was applied before a stop: only the finish is left
                self._finish(resource)
                continue
            self._fetched_seconds[resource.name] = set()
            for window in windows:
                scheduler.add(window)
        self._report()
        if sum(scheduler.open.values()):
            self._fetch_and_apply(scheduler)
        for resource in resources:
            if not self.progress[resource.name].finished:
                self._finish(resource)
        self._report()
        return list(self.progress.values())

    def _fetch_and_apply(self, scheduler: _Scheduler) -> None:
        arrived: queue.Queue[_Fetched | BaseException | None] = queue.Queue(maxsize=2 * self.threads)
        pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="billing-mirror-sync")
        for _ in range(self.threads):
            pool.submit(self._fetch_loop, scheduler, arrived)
        in_flight: deque[_Fetched] = deque()
        try:
            for results in self.store.ingest_planned_in_order(
                self._planned(arrived, in_flight), in_flight_events=IN_FLIGHT_PAGES
            ):
                for result in results:
                    self._applied(in_flight.popleft(), result)
        finally:
            self._stop.set()
            for _ in range(self.threads):
                scheduler.queue.put(None)
            while True:  # unblock a thread waiting to hand over its page
                try:
                    arrived.get_nowait()
                except queue.Empty:
                    break
            pool.shutdown(wait=True, cancel_futures=True)

    def _planned(
        self, arrived: queue.Queue[_Fetched | BaseException | None], in_flight: deque[_Fetched]
    ) -> Iterator[list[PlannedEvent]]:
        held: deque[_Fetched | BaseException | None] = deque()
        while True:
            item = held.popleft() if held else arrived.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise SyncFailed(f"{type(item).__name__}: {item}") from item
            # The pages that arrived while the last commit was written go in one transaction with it.
            batch = [item]
            while len(batch) < PAGES_PER_COMMIT:
                try:
                    more = arrived.get_nowait()
                except queue.Empty:
                    break
                if not isinstance(more, _Fetched):
                    held.append(more)
                    break
                batch.append(more)
            in_flight.extend(batch)
            yield [page.planned for page in batch]

    def _applied(self, item: _Fetched, result: IngestResult | DatabaseUnavailable) -> None:
        if isinstance(result, DatabaseUnavailable):
            raise SyncFailed(f"the database is unavailable: {result}")
        progress = self.progress[item.resource.name]
        progress.objects += item.objects
        progress.pages += 1
        if result.outcome == Outcome.FAILED:
            progress.failed += 1
        elif result.outcome == Outcome.STALE or result.duplicate:
            progress.stale += 1
        else:
            progress.applied += 1
        progress.windows_open += len(item.new_windows)
        if item.window.done:
            progress.windows_open -= 1
            progress.windows_done += 1
        logger.info(
            "sync %s: page of %d objects stored (%s), window %s..%s%s; %d objects so far",
            item.resource.name,
            item.objects,
            "duplicate" if result.duplicate else result.outcome.value,
            item.window.created_gte if item.window.created_gte is not None else "",
            item.window.created_lt if item.window.created_lt is not None else "",
            " done" if item.window.done else "",
            progress.objects,
            extra={"resource": item.resource.name, "objects": item.objects, "outcome": result.outcome.value},
        )
        self._fetched_seconds[item.resource.name].add(item.fetched_at)
        if item.resource.created_filter:
            self._track(item)
        self._report()

    # -- fetch threads -------------------------------------------------------------------------

    def _fetch_loop(
        self, scheduler: _Scheduler, arrived: queue.Queue[_Fetched | BaseException | None]
    ) -> None:
        try:
            while not self._stop.is_set():
                window = scheduler.queue.get()
                if window is None or self._stop.is_set():
                    return
                item = self._fetch_page(window, scheduler)
                arrived.put(item)
                for new in item.new_windows:
                    scheduler.add(new)
                if not window.done:
                    scheduler.queue.put(window)
                elif scheduler.close(window.resource):
                    arrived.put(None)
                    for _ in range(self.threads):
                        scheduler.queue.put(None)
        except BaseException as exc:  # handed to the applying thread, which stops the run
            if not self._stop.is_set():
                arrived.put(exc)

    def _fetch_page(self, window: Window, scheduler: _Scheduler) -> _Fetched:
        resource = self.progress[window.resource].resource
        params = window.params()
        if resource is INVOICES and self._expand_payments:
            params["expand"] = ["data.payments"]
        page = self.reader.page(resource.path, params, window.cursor, endpoint=resource.path)
        if resource is INVOICES:
            for invoice in page.objects:
                complete_invoice(self.reader, invoice)
        new_windows = self._advance(window, resource, page, scheduler)
        as_it_stands = window.copy()
        # Planned here, in parallel with the other pages, so that the applying thread only writes.
        [planned] = self.store.plan([self._snapshot(resource, page)])
        account = self.checkpoints.account
        after = page_checkpoint(
            self.dialect, account, as_it_stands, len(page.objects), new_windows, page.fetched_at
        )
        return _Fetched(
            resource,
            planned._replace(after=after),
            len(page.objects),
            as_it_stands,
            new_windows,
            page.fetched_at,
            [obj["id"] for obj in page.objects if isinstance(obj.get("id"), str)],
        )

    def _advance(
        self, window: Window, resource: Resource, page: ListPage, scheduler: _Scheduler
    ) -> list[Window]:
        """Move ``window`` past ``page``; when threads are idle, end it and cut what it has left to
        read (its range up to the page's oldest second, included) into new windows."""
        window.pages += 1
        window.objects += len(page.objects)
        if page.objects:
            window.cursor = page.objects[-1]["id"]
        created = [value for obj in page.objects if (value := resource.created_of(obj)) is not None]
        oldest = min(created) if created else None
        if oldest is not None:
            window.position = oldest
        window.done = not page.has_more
        if window.done or not resource.created_filter or oldest is None:
            return []
        low = window.created_gte if window.created_gte is not None else 0
        step = FIRST_WINDOW_PAGES * (max(created) - oldest + 1)
        idle = scheduler.idle()
        # Nobody to share with, or no more left than one new window would take: page on (a cut costs
        # a partial page and a second read twice, and would gain no parallel window).
        if idle < 1 or oldest + 1 - low <= step:
            return []
        window.done = True
        return split(resource.name, low, oldest + 1, step, min(idle + 1, MAX_SPLIT))

    def _snapshot(self, resource: Resource, page: ListPage) -> Event:
        return fetched_snapshot(
            self.reader.api,
            resource,
            page.objects,
            fetched_at=page.fetched_at,
            request_id=page.request_id,
            origin=self.origin,
            has_more=page.has_more,
        )

    # -- the end of a resource -------------------------------------------------------------------

    def _finish(self, resource: Resource) -> None:
        """Objects that an event changed in the very second a page was read are read once more (a
        read after that second is newer than both), then the backfill is recorded as finished."""
        progress = self.progress[resource.name]
        seconds = self._fetched_seconds.get(resource.name, set())
        tied = self._tied_objects(resource, seconds) if seconds else []
        finished_at = max(seconds) if seconds else None
        for object_id in tied:
            obj, fetched_at, request_id = self.reader.retrieve(
                f"{resource.path}/{object_id}", endpoint=resource.retrieve_endpoint
            )
            if obj is None:
                continue  # gone since: its deletion event (or a reconcile) says so
            if resource is INVOICES:
                complete_invoice(self.reader, obj)
            event = self._snapshot(resource, ListPage([obj], False, fetched_at, request_id))
            for results in self.store.ingest_planned_in_order([self.store.plan([event])]):
                if any(isinstance(result, DatabaseUnavailable) for result in results):
                    raise SyncFailed(f"the database is unavailable: {results}")
            progress.refreshed += 1
            finished_at = max(finished_at or fetched_at, fetched_at)
        if finished_at is None:
            state = self.checkpoints.state(resource.name)
            finished_at = (state.started_at if state else None) or int(time.time())
        self.checkpoints.finish(resource.name, finished_at)
        progress.finished = True
        logger.info(
            "sync %s: finished, %d objects in %d pages (%d read again)",
            resource.name,
            progress.objects,
            progress.pages,
            progress.refreshed,
            extra={"resource": resource.name, "objects": progress.objects},
        )

    def _tied_objects(self, resource: Resource, seconds: set[int]) -> list[str]:
        """Objects of ``resource`` named by an event (not a snapshot) created in one of ``seconds``."""
        events = table_of(StripeEvent)
        prefix = {
            "invoice": "in_",
            "invoiceitem": "ii_",
            "invoice_payment": "inpay_",
            "billing.meter": "mtr_",
        }
        wanted = prefix.get(resource.object_name)
        if wanted is None:
            return []
        found: set[str] = set()
        ordered = sorted(seconds)
        with self.engine.connect() as connection:
            for start in range(0, len(ordered), 500):
                query = select(events.c.object_id).where(
                    events.c.created.in_(ordered[start : start + 500]),
                    events.c.source.in_([EventSource.WEBHOOK.value, EventSource.EVENTS_API.value]),
                    events.c.object_id.startswith(wanted),
                )
                found.update(object_id for (object_id,) in connection.execute(query) if object_id)
        return sorted(found)

    def _track(self, item: _Fetched) -> None:
        """Seconds of ``created`` read through, and left to read, for the time estimate: a window
        is read from its top down to its bottom (to the oldest object seen, while unknown)."""
        name = item.resource.name
        tracked = self._coverage.setdefault(name, {})
        window = item.window
        top, _ = tracked.get(window.span, (window.created_lt or item.fetched_at, None))
        position = window.position if window.position is not None else top
        progress = self.progress[name]
        progress.covered += max(0, top - position)
        floor = self._floor.get(name)
        if window.position is not None:
            floor = self._floor[name] = window.position if floor is None else min(floor, window.position)
        if window.done:
            tracked.pop(window.span, None)
        else:
            tracked[window.span] = (position, window.created_gte)
        for new in item.new_windows:
            tracked[new.span] = (new.created_lt or item.fetched_at, new.created_gte)
        remaining = 0
        for position, low in tracked.values():
            remaining += max(0, position - max(low or 0, floor or 0))
        progress.remaining = remaining

    def _report(self) -> None:
        if self.on_progress is not None:
            self.on_progress(list(self.progress.values()))
