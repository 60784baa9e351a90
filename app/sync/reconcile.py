"""``billing-mirror reconcile``: compare the mirror with Stripe object by object, and fix what differs.

Each resource is read from Stripe's list (in ``created`` windows cut where the mirror holds about
WINDOW_ROWS rows, read in parallel; one list when it has no ``created`` filter) and compared window
by window with the mirror's rows of the same range, so memory stays bounded whatever the size:

* missing: Stripe lists it, the mirror does not have it (or holds it as deleted);
* extra: the mirror has it, Stripe does not list it (deleted in Stripe while no event reached us);
* different: both have it, and what Stripe sends differs from what the mirror holds (for invoices,
  every line compared too).

A row written by an event created after the list was read is newer than the list, not drift. Every
difference is confirmed by reading the object again (``GET .../{id}``) and comparing with the row as
it is then, so a change in flight is not reported. ``fix`` applies Stripe's current snapshot through
the guarded writes (a snapshot event with source ``reconcile``, in the log like any other change);
an object Stripe no longer has is tombstoned where Stripe deletes for good (invoices, invoice items).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from sqlalchemy import Engine, select

from app.db.models import InvoiceLineItem
from app.ingest.apply import IngestResult
from app.ingest.store import EventStore
from app.mirror.envelope import EventSource
from app.mirror.outcome import Outcome
from app.mirror.upsert import table_of
from app.read.resources.invoice_items import CURRENT_INVOICE, as_served
from app.sync.fetch import ListPage, StripeReader, complete_invoice, fetch_chains
from app.sync.resources import INVOICE_ITEMS, INVOICES, Resource, fetched_snapshot, written_for_account

WINDOW_ROWS = 5_000  # mirror rows per compared window
LINE_QUERY_CHUNK = 500
# Fields not compared: includable lists that a list or a webhook may carry or not (lines are compared
# one by one, from the mirror's line rows).
NOT_COMPARED = {"invoice": frozenset({"lines", "payments"})}


@dataclass(frozen=True)
class Difference:
    resource: str
    object_id: str
    kind: str  # missing | extra | different
    fields: tuple[str, ...] = ()  # for different: the top-level fields that differ
    fixed: bool = False
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "resource": self.resource,
            "id": self.object_id,
            "kind": self.kind,
            "fields": list(self.fields),
            "fixed": self.fixed,
            "note": self.note,
        }


@dataclass
class ResourceCheck:
    resource: str
    in_stripe: int = 0
    in_mirror: int = 0
    differences: list[Difference] = field(default_factory=list)

    def count(self, kind: str) -> int:
        return sum(1 for difference in self.differences if difference.kind == kind)

    def as_dict(self) -> dict[str, Any]:
        return {
            "resource": self.resource,
            "in_stripe": self.in_stripe,
            "in_mirror": self.in_mirror,
            "missing": self.count("missing"),
            "extra": self.count("extra"),
            "different": self.count("different"),
            "differences": [difference.as_dict() for difference in self.differences],
        }


@dataclass
class ReconcileReport:
    checks: list[ResourceCheck] = field(default_factory=list)

    @property
    def drift(self) -> bool:
        """Something differs that is not fixed."""
        return any(not d.fixed for check in self.checks for d in check.differences)

    def as_dict(self) -> dict[str, Any]:
        return {"drift": self.drift, "resources": [check.as_dict() for check in self.checks]}


@dataclass
class _Row:
    payload: Any  # decoded JSON, or None
    deleted: bool
    version_created: int  # when the event (or snapshot) that wrote it was created
    lines: list[Any] | None = None  # invoices: the line payloads, in order


@dataclass
class _Window:
    created_gte: int | None
    created_lt: int | None

    def params(self) -> dict[str, Any]:
        created = {}
        if self.created_gte is not None:
            created["gte"] = self.created_gte
        if self.created_lt is not None:
            created["lt"] = self.created_lt
        return {"created": created} if created else {}


def differing_fields(resource: Resource, stripe: dict[str, Any], mirror: _Row) -> tuple[str, ...]:
    """Top-level fields whose values differ (``lines`` for an invoice whose lines differ)."""
    skipped = NOT_COMPARED.get(resource.object_name, frozenset())
    mine = mirror.payload if isinstance(mirror.payload, dict) else {}
    names = sorted((set(stripe) | set(mine)) - skipped)
    different = [name for name in names if stripe.get(name) != mine.get(name)]
    if resource is INVOICES:
        listed = stripe.get("lines")
        theirs = listed.get("data") if isinstance(listed, dict) else None
        if theirs is not None and theirs != mirror.lines:
            different.append("lines")
    return tuple(different)


class Reconcile:
    def __init__(
        self,
        reader: StripeReader,
        engine: Engine,
        store: EventStore,
        *,
        fix: bool = False,
        threads: int = 4,
        since: int | None = None,
        on_progress: Callable[[ResourceCheck], None] | None = None,
    ) -> None:
        self.reader = reader
        self.engine = engine
        self.store = store
        self.fix = fix
        self.threads = threads
        self.since = since
        self.on_progress = on_progress

    def run(self, resources: Sequence[Resource]) -> ReconcileReport:
        report = ReconcileReport()
        for resource in resources:
            report.checks.append(self._check(resource))
        return report

    # -- one resource ----------------------------------------------------------------------------

    def _check(self, resource: Resource) -> ResourceCheck:
        check = ResourceCheck(resource.name)
        windows = self._windows(resource)
        received: dict[int, dict[str, tuple[dict[str, Any], int]]] = {
            number: {} for number in range(len(windows))
        }
        prepare = self._prepare_invoices if resource is INVOICES else None
        chains = [(number, window.params()) for number, window in enumerate(windows)]
        suspects: list[tuple[str, str, int]] = []  # (kind, id, Stripe's time of the list read)
        for number, page in fetch_chains(
            self.reader, resource.path, chains, threads=self.threads, endpoint=resource.path, prepare=prepare
        ):
            if page is not None:
                for obj in page.objects:
                    if isinstance(obj.get("id"), str):
                        received[number][obj["id"]] = (obj, page.fetched_at)
                continue
            listed = received.pop(number)
            suspects += self._compare_window(resource, windows[number], listed, check)
            if self.on_progress is not None:
                self.on_progress(check)
        for kind, object_id, _listed_at in suspects:
            difference = self._confirm(resource, kind, object_id)
            if difference is not None:
                check.differences.append(difference)
        return check

    def _prepare_invoices(self, page: ListPage) -> None:
        for invoice in page.objects:
            complete_invoice(self.reader, invoice)

    def _created_column(self, resource: Resource) -> Any:
        table = table_of(resource.model)
        return table.c[resource.created_field] if resource.created_field else None

    def _windows(self, resource: Resource) -> list[_Window]:
        """Windows of ``created`` that each hold about WINDOW_ROWS of the mirror's rows, from
        ``since`` (or the beginning) to the end of time; one when the list has no filter."""
        column = self._created_column(resource)
        if not resource.created_filter or column is None:
            return [_Window(None, None)]
        table = table_of(resource.model)
        account = written_for_account(table, self.reader.api.stripe_account)
        query = select(column).where(column.is_not(None), account).order_by(column)
        if self.since is not None:
            query = query.where(column >= self.since)
        bounds: list[int] = []
        with self.engine.connect() as connection:
            result = connection.execution_options(yield_per=WINDOW_ROWS).execute(query)
            for position, (created,) in enumerate(result, start=1):
                if position % WINDOW_ROWS == 0 and (not bounds or created > bounds[-1]):
                    bounds.append(int(created))
        edges: list[int | None] = [self.since, *bounds, None]
        return [_Window(edges[index], edges[index + 1]) for index in range(len(edges) - 1)]

    def _mirror_rows(
        self, resource: Resource, window: _Window | None, ids: Sequence[str] = ()
    ) -> dict[str, _Row]:
        """The mirror's rows of ``window`` (or the rows of ``ids``), decoded, as the read API serves
        them (an invoice item's ``invoice`` is the one it is on now)."""
        table = table_of(resource.model)
        columns = [table.c.id, table.c.payload, table.c.last_event_created]
        has_tombstone = "deleted" in table.c
        if has_tombstone:
            columns.append(table.c.deleted)
        served = resource is INVOICE_ITEMS
        if served:
            columns += [table.c.invoice, CURRENT_INVOICE]
        query = select(*columns).where(written_for_account(table, self.reader.api.stripe_account))
        column = self._created_column(resource)
        if ids:
            query = query.where(table.c.id.in_(list(ids)))
        elif window is not None and column is not None and resource.created_filter:
            if window.created_gte is not None:
                query = query.where(column >= window.created_gte)
            if window.created_lt is not None:
                query = query.where(column < window.created_lt)
        found: dict[str, _Row] = {}
        with self.engine.connect() as connection:
            for row in connection.execute(query):
                text = (
                    as_served(row.payload, (row.invoice, row[-1])) if served and row.payload else row.payload
                )
                payload = orjson.loads(text) if text else None
                deleted = bool(row.deleted) if has_tombstone else False
                found[row.id] = _Row(payload, deleted, int(row.last_event_created))
            if resource is INVOICES and found:
                self._attach_lines(connection, found)
        return found

    @staticmethod
    def _attach_lines(connection: Any, invoices: dict[str, _Row]) -> None:
        lines = table_of(InvoiceLineItem)
        ordered = sorted(invoices)
        for row in invoices.values():
            row.lines = []
        for start in range(0, len(ordered), LINE_QUERY_CHUNK):
            query = (
                select(lines.c.invoice, lines.c.payload)
                .where(lines.c.invoice.in_(ordered[start : start + LINE_QUERY_CHUNK]))
                .order_by(lines.c.invoice, lines.c.position, lines.c.id)
            )
            for invoice, payload in connection.execute(query):
                invoice_lines = invoices[invoice].lines
                assert invoice_lines is not None
                invoice_lines.append(orjson.loads(payload))

    def _compare_window(
        self,
        resource: Resource,
        window: _Window,
        listed: dict[str, tuple[dict[str, Any], int]],
        check: ResourceCheck,
    ) -> list[tuple[str, str, int]]:
        """Objects that look different in this window: (kind, id, when the list was read)."""
        mirror = self._mirror_rows(resource, window)
        check.in_stripe += len(listed)
        check.in_mirror += sum(1 for row in mirror.values() if not row.deleted)
        suspects = []
        read_at = max((fetched_at for _, fetched_at in listed.values()), default=0)
        for object_id, (obj, fetched_at) in listed.items():
            row = mirror.get(object_id)
            if row is None or row.deleted or row.payload is None:
                suspects.append(("missing", object_id, fetched_at))
            elif row.version_created <= fetched_at and differing_fields(resource, obj, row):
                suspects.append(("different", object_id, fetched_at))
        for object_id, row in mirror.items():
            if object_id not in listed and not row.deleted:
                suspects.append(("extra", object_id, read_at))
        return suspects

    # -- confirming and fixing --------------------------------------------------------------------

    def _confirm(self, resource: Resource, suspected: str, object_id: str) -> Difference | None:
        """Read the object again and compare it with the row as it is now: a difference that a
        newer event explains, or that is gone, is not drift."""
        obj, fetched_at, request_id = self.reader.retrieve(
            f"{resource.path}/{object_id}", endpoint=resource.retrieve_endpoint
        )
        if obj is not None and resource is INVOICES:
            complete_invoice(self.reader, obj)
        row = self._mirror_rows(resource, None, [object_id]).get(object_id)
        if row is not None and row.version_created > fetched_at:
            return None  # an event newer than our read wrote the row: the mirror is ahead
        name = resource.name
        if obj is None:
            if row is None or row.deleted:
                return None  # gone from both
            gone = Difference(name, object_id, "extra", note="gone from Stripe")
            return self._fixed(resource, gone, None, fetched_at, request_id)
        if row is None or row.payload is None:
            return self._fixed(resource, Difference(name, object_id, "missing"), obj, fetched_at, request_id)
        if row.deleted:  # a tombstone is never cleared: a deletion event was seen
            return Difference(
                name, object_id, "missing", note="deleted in the mirror, still listed by Stripe"
            )
        fields = differing_fields(resource, obj, row)
        if not fields:
            return None  # e.g. not in the list (a test-clock invoice, an archived alert) but the same
        note = "not in Stripe's list" if suspected == "extra" else ""
        found = Difference(name, object_id, "different", fields, note=note)
        return self._fixed(resource, found, obj, fetched_at, request_id)

    def _fixed(
        self,
        resource: Resource,
        found: Difference,
        obj: dict[str, Any] | None,
        fetched_at: int,
        request_id: str | None,
    ) -> Difference:
        """``found``, fixed when asked to and possible: Stripe's object as a snapshot event, or, for
        an object Stripe deleted for good, its deleted stub (a tombstone)."""
        if not self.fix:
            return found
        if obj is None:
            if not resource.tombstones:
                return replace(found, note=f"{found.note}; the mirror keeps no tombstone for {resource.name}")
            obj = {"id": found.object_id, "object": resource.object_name, "deleted": True}
        event = fetched_snapshot(
            self.reader.api,
            resource,
            [obj],
            fetched_at=fetched_at,
            request_id=request_id,
            origin=EventSource.RECONCILE,
        )
        [result] = self.store.ingest([event])
        applied = isinstance(result, IngestResult) and result.outcome == Outcome.APPLIED
        return replace(found, fixed=applied)
