"""The server's data: per account, one sorted collection per list endpoint, objects kept as the JSON bytes
they are served as, so a page is a slice and a join."""

from __future__ import annotations

import bisect
import copy
import hashlib
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from tests.stripe_server.query import TimeRange

PLATFORM_ACCOUNT = "acct_platform"

INVOICES = "invoices"
INVOICE_ITEMS = "invoiceitems"
INVOICE_PAYMENTS = "invoice_payments"
METERS = "billing.meters"
ALERTS = "billing.alerts"
TEMPLATES = "invoice_rendering_templates"
EVENTS = "events"
RESOURCES = (INVOICES, INVOICE_ITEMS, INVOICE_PAYMENTS, METERS, ALERTS, TEMPLATES, EVENTS)
LIST_URLS = {
    INVOICES: "/v1/invoices",
    INVOICE_ITEMS: "/v1/invoiceitems",
    INVOICE_PAYMENTS: "/v1/invoice_payments",
    METERS: "/v1/billing/meters",
    ALERTS: "/v1/billing/alerts",
    TEMPLATES: "/v1/invoice_rendering_templates",
    EVENTS: "/v1/events",
}
OBJECT_NAMES = {
    INVOICES: "invoice",
    INVOICE_ITEMS: "invoiceitem",
    INVOICE_PAYMENTS: "invoice_payment",
    METERS: "billing.meter",
    ALERTS: "billing.alert",
    TEMPLATES: "invoice_rendering_template",
    EVENTS: "event",
}
EMBEDDED_PAGE = 10  # Stripe embeds the first 10 lines of an invoice


class ServerClock:
    """The server's own time (Date header, event horizon, token buckets): the wall clock until set."""

    def __init__(self, now: float | None = None) -> None:
        self._now = now

    def now(self) -> float:
        return time.time() if self._now is None else self._now

    def set(self, now: float) -> None:
        self._now = now

    def advance(self, seconds: float) -> None:
        self._now = self.now() + seconds


SortKey = tuple[int, str]


class Record:
    """One object: its place in list order, its id and its JSON; the dict is parsed only when needed."""

    __slots__ = ("_obj", "body", "id", "key")

    def __init__(self, key: SortKey, object_id: str, body: bytes, obj: dict[str, Any] | None = None) -> None:
        self.key = key
        self.id = object_id
        self.body = body
        self._obj = obj

    @property
    def obj(self) -> dict[str, Any]:
        if self._obj is None:
            self._obj = orjson.loads(self.body)
        return self._obj


Matcher = Callable[[dict[str, Any]], bool]


class Collection:
    """The objects of one list in ascending (created, tie) order; a list is read from the end, so it comes
    out newest first. ``tie`` is the id, or a seeded hash of it to shuffle objects of the same second."""

    def __init__(self, tie_seed: int | None = None) -> None:
        self._tie_seed = tie_seed
        self._keys: list[SortKey] = []
        self._records: list[Record] = []
        self._by_id: dict[str, Record] = {}

    def __len__(self) -> int:
        return len(self._records)

    def tie(self, object_id: str) -> str:
        if self._tie_seed is None:
            return object_id
        return hashlib.blake2b(f"{self._tie_seed}:{object_id}".encode(), digest_size=8).hexdigest()

    def get(self, object_id: str) -> Record | None:
        return self._by_id.get(object_id)

    def put(self, object_id: str, created: int, body: bytes, obj: dict[str, Any] | None = None) -> None:
        self.remove(object_id)
        record = Record((created, self.tie(object_id)), object_id, body, obj)
        index = bisect.bisect_left(self._keys, record.key)
        self._keys.insert(index, record.key)
        self._records.insert(index, record)
        self._by_id[object_id] = record

    def load(self, rows: Iterable[tuple[int, str, bytes]]) -> None:
        """Many objects at once, sorted once (the benchmark's million)."""
        for created, object_id, body in rows:
            self._by_id.pop(object_id, None)
            self._by_id[object_id] = Record((created, self.tie(object_id)), object_id, body)
        self._resort()

    def remove(self, object_id: str) -> Record | None:
        record = self._by_id.pop(object_id, None)
        if record is not None:
            index = bisect.bisect_left(self._keys, record.key)
            del self._keys[index]
            del self._records[index]
        return record

    def reshuffle(self, tie_seed: int | None) -> None:
        self._tie_seed = tie_seed
        for record in self._by_id.values():
            record.key = (record.key[0], self.tie(record.id))
        self._resort()

    def _resort(self) -> None:
        self._records = sorted(self._by_id.values(), key=lambda record: record.key)
        self._keys = [record.key for record in self._records]

    def page(
        self,
        *,
        limit: int,
        window: TimeRange | None = None,
        matches: Matcher | None = None,
        after: SortKey | None = None,
        before: SortKey | None = None,
    ) -> tuple[list[Record], bool]:
        """Up to ``limit`` records in list order (descending) and whether more exist in the paging direction.
        ``after`` (starting_after) pages to older keys, ``before`` (ending_before) takes the ``limit``
        closest newer keys; both filter together with ``window`` and ``matches``."""
        low, high = 0, len(self._keys)
        if window is not None and window.since is not None:
            low = bisect.bisect_left(self._keys, (window.since, ""))
        if window is not None and window.until is not None:
            high = bisect.bisect_left(self._keys, (window.until, ""))
        if after is not None:
            high = min(high, bisect.bisect_left(self._keys, after))
        if before is not None:
            low = max(low, bisect.bisect_right(self._keys, before))
        if low >= high:
            return [], False
        if matches is None:
            if before is not None:  # the closest newer ones: ascending from `low`, served descending
                chosen = self._records[low : min(high, low + limit)]
                return chosen[::-1], low + limit < high
            start = max(low, high - limit)
            return self._records[start:high][::-1], start > low
        found: list[Record] = []
        indexes = range(low, high) if before is not None else range(high - 1, low - 1, -1)
        for index in indexes:
            record = self._records[index]
            if matches(record.obj):
                if len(found) == limit:
                    return (found[::-1] if before is not None else found), True
                found.append(record)
        return (found[::-1] if before is not None else found), False


def list_envelope(bodies: Iterable[bytes], has_more: bool, url: str) -> bytes:
    """The list object around already-serialized objects."""
    more = b"true" if has_more else b"false"
    return (
        b'{"object":"list","data":['
        + b",".join(bodies)
        + b'],"has_more":'
        + more
        + b',"url":'
        + orjson.dumps(url)
        + b"}"
    )


@dataclass
class Account:
    """One account's data: Stripe-Account partitions everything."""

    tie_seed: int | None
    collections: dict[str, Collection] = field(default_factory=dict)
    lines: dict[str, Collection] = field(default_factory=dict)  # invoice id -> its lines, in line order
    payments_by_invoice: dict[str, Collection] = field(default_factory=dict)
    deleted: dict[str, dict[str, str]] = field(default_factory=dict)  # resource -> id -> object name
    event_visible_at: dict[str, float] = field(default_factory=dict)
    event_delivered: dict[str, bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for resource in RESOURCES:
            self.collections[resource] = Collection(self.tie_seed)
            self.deleted[resource] = {}

    def all_collections(self) -> list[Collection]:
        return [*self.collections.values(), *self.lines.values(), *self.payments_by_invoice.values()]


class Store:
    """All accounts' objects. Every method holds ``lock``, which the app also holds while it reads, so a
    test may change the data while the server thread serves."""

    def __init__(self, clock: ServerClock, *, tie_seed: int | None = None) -> None:
        self.clock = clock
        self.lock = threading.RLock()
        self.tie_seed = tie_seed
        self.accounts: dict[str, Account] = {PLATFORM_ACCOUNT: Account(tie_seed)}

    def add_account(self, account_id: str) -> None:
        with self.lock:
            self.accounts.setdefault(account_id, Account(self.tie_seed))

    def account(self, account_id: str = PLATFORM_ACCOUNT) -> Account:
        return self.accounts[account_id]

    def shuffle_ties(self, seed: int | None) -> None:
        """Order objects of the same second by a seeded hash instead of their id (None: by id again)."""
        with self.lock:
            self.tie_seed = seed
            for account in self.accounts.values():
                account.tie_seed = seed
                for collection in account.all_collections():
                    collection.reshuffle(seed)

    def put(
        self,
        resource: str,
        obj: dict[str, Any],
        *,
        account: str = PLATFORM_ACCOUNT,
        created: int | None = None,
    ) -> dict[str, Any]:
        """Add or replace an object. An invoice's ``lines.data`` is taken as all its lines: they go to its
        lines list and the invoice embeds the first 10. ``created`` orders objects that have no such field
        (alerts); it defaults to the object's ``created`` (``date`` for invoice items), else the clock."""
        with self.lock:
            data = self.accounts[account]
            stored = copy.deepcopy(obj)
            if resource == INVOICES:
                stored = self._store_lines(data, stored)
            if resource == INVOICE_PAYMENTS:
                self._unlink_payment(data, stored["id"])
            sort_created = created if created is not None else _creation_time(resource, stored, self.clock)
            body = orjson.dumps(stored)
            data.collections[resource].put(stored["id"], sort_created, body, stored)
            data.deleted[resource].pop(stored["id"], None)
            if resource == INVOICE_PAYMENTS and isinstance(stored.get("invoice"), str):
                payments = data.payments_by_invoice.setdefault(stored["invoice"], Collection(self.tie_seed))
                payments.put(stored["id"], sort_created, body, stored)
            return stored

    def put_many(
        self, resource: str, objects: Iterable[dict[str, Any]], *, account: str = PLATFORM_ACCOUNT
    ) -> None:
        for obj in objects:
            self.put(resource, obj, account=account)

    def load_serialized(
        self, resource: str, rows: Iterable[tuple[int, str, bytes]], *, account: str = PLATFORM_ACCOUNT
    ) -> None:
        """Objects already serialized, as (created, id, JSON bytes), sorted once: for big benchmarks."""
        with self.lock:
            self.accounts[account].collections[resource].load(rows)

    def delete(self, resource: str, object_id: str, *, account: str = PLATFORM_ACCOUNT) -> None:
        """The object leaves its lists; retrieving it answers 404 (or the deleted stub)."""
        with self.lock:
            data = self.accounts[account]
            if data.collections[resource].remove(object_id) is None:
                raise KeyError(object_id)
            data.deleted[resource][object_id] = OBJECT_NAMES[resource]
            if resource == INVOICES:
                data.lines.pop(object_id, None)
            if resource == INVOICE_PAYMENTS:
                self._unlink_payment(data, object_id)

    def add_event(
        self,
        event: dict[str, Any],
        *,
        account: str = PLATFORM_ACCOUNT,
        visible_after: float = 0.0,
        delivered: bool | None = None,
    ) -> dict[str, Any]:
        """An event, listed only ``visible_after`` seconds after its ``created`` (Stripe's list lags);
        ``delivered`` defaults to "no webhook pending" (``pending_webhooks == 0``)."""
        with self.lock:
            stored = self.put(EVENTS, event, account=account)
            data = self.accounts[account]
            if visible_after:
                data.event_visible_at[stored["id"]] = stored["created"] + visible_after
            else:
                data.event_visible_at.pop(stored["id"], None)
            data.event_delivered[stored["id"]] = (
                delivered if delivered is not None else stored.get("pending_webhooks", 0) == 0
            )
            return stored

    def _store_lines(self, data: Account, invoice: dict[str, Any]) -> dict[str, Any]:
        invoice.pop("payments", None)  # includable: rendered on request only
        lines = invoice.get("lines", {}).get("data", [])
        collection = Collection()  # line order is the invoice's, never shuffled
        for position, line in enumerate(lines):
            line["invoice"] = invoice["id"]
            collection.put(line["id"], -position, orjson.dumps(line), line)
        data.lines[invoice["id"]] = collection
        invoice["lines"] = {
            "object": "list",
            "data": lines[:EMBEDDED_PAGE],
            "has_more": len(lines) > EMBEDDED_PAGE,
            "url": f"/v1/invoices/{invoice['id']}/lines",
        }
        return invoice

    def _unlink_payment(self, data: Account, payment_id: str) -> None:
        for payments in data.payments_by_invoice.values():
            payments.remove(payment_id)


def _creation_time(resource: str, obj: dict[str, Any], clock: ServerClock) -> int:
    if resource == INVOICE_ITEMS:
        return int(obj["date"])
    created = obj.get("created")
    return int(created) if created is not None else int(clock.now())
