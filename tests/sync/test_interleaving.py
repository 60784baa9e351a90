"""Property: webhooks keep arriving during a backfill, and whatever the interleaving of fetched pages
(snapshot events, app.mirror.snapshots) and events, with duplicates and in any batches, the mirror ends
at Stripe's final state (on SQLite and PostgreSQL).

The test models a small Stripe account: invoice items created and deleted, invoices whose lines change
while draft and whose status moves draft -> open -> paid or void (with their invoice payment, open ->
paid or canceled, embedded in them) or that are deleted while draft, and a billing meter deactivated,
reactivated and renamed. Each
change happens at a moment (a second and a tick within it) and produces events created at that second,
carrying the objects as they are after it. A fetch happens at a moment too and lists the objects as
they are then. Between two batches, every object must show the state of the newest thing delivered
about it, which is what the ordering rules say: a snapshot never overwrites what an event created after
its fetch wrote, an event created before the fetch never overwrites the snapshot, a same-second tie
goes to the event unless the snapshot's status is further along, tombstones stay and terminal statuses
are never replaced. Deterministic examples of each rule follow the property.

Two changes of one object within one second that leave its status where it was cannot be ordered even
without snapshots (a documented limit), so the model never makes them. Two pages read within one second
cannot be ordered either (Stripe dates a response by the second): between them the mirror may show the
older one, until the event of the change between them (created in that second) arrives (``newest``).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from app.ingest.apply import IngestResult
from app.ingest.store import EventStore
from app.mirror.envelope import Event, EventSource, parse_event
from app.mirror.snapshots import is_snapshot, snapshot_event
from app.testing.dump import Dump, dump, rows
from tests.support import (
    API_VERSION,
    PAYMENT_TEMPLATE,
    T0,
    deliveries,
    encode,
    item,
    make_event,
    reset,
    snapshot_of,
)

Obj = dict[str, Any]
# (unix second, tick within that second): changes happen at even ticks, fetches at odd ones, so a
# fetch is always before or after a change, never at the same moment.
Moment = tuple[int, int]
Key = tuple[str, str]  # (mirror table, object id)
CHANGE_TICKS = (0, 2, 4, 6, 8)
FETCH_TICKS = (1, 3, 5, 7, 9)

# ---- Stripe objects -------------------------------------------------------------------------

INVOICE_TEMPLATE = snapshot_of("invoice.created")
LINE_TEMPLATE = next(
    line
    for line in snapshot_of("invoice.paid")["lines"]["data"]
    if line["parent"]["type"] != "invoice_item_details"
)
METER_TEMPLATE = snapshot_of("billing.meter.created")
LINE_AMOUNTS = {"a": 2900, "b": 1250, "c": 800}
NO_STAMPS: dict[str, int | None] = {
    "finalized_at": None,
    "marked_uncollectible_at": None,
    "paid_at": None,
    "voided_at": None,
}
OBJECT_TABLES = {
    "invoice": "invoices",
    "invoiceitem": "invoice_items",
    "invoice_payment": "invoice_payments",
    "billing.meter": "billing_meters",
}
# A list endpoint: the mirror table of its objects -> Stripe's object name, its path, its creation field.
LISTS = {
    "invoice_items": ("invoiceitem", "/v1/invoiceitems", "date"),
    "invoices": ("invoice", "/v1/invoices", "created"),
    "invoice_payments": ("invoice_payment", "/v1/invoice_payments", "created"),
    "billing_meters": ("billing.meter", "/v1/billing/meters", "created"),
}


def line(invoice_id: str, letter: str) -> Obj:
    obj: Obj = copy.deepcopy(LINE_TEMPLATE)
    amount = LINE_AMOUNTS[letter]
    obj.update(
        id=f"il_{invoice_id[3:]}_{letter}",
        invoice=invoice_id,
        amount=amount,
        subtotal=amount,
        description=f"Line {letter}",
    )
    return obj


def payment_object(payment_id: str, invoice_id: str, created: int, status: str, at: int | None = None) -> Obj:
    obj = copy.deepcopy(PAYMENT_TEMPLATE)
    amount = 4150
    obj.update(
        id=payment_id,
        invoice=invoice_id,
        created=created,
        status=status,
        amount_requested=amount,
        amount_paid=amount if status == "paid" else None,
        payment={"type": "payment_intent", "payment_intent": f"pi_{payment_id[6:]}"},
        status_transitions={
            "canceled_at": at if status == "canceled" else None,
            "paid_at": at if status == "paid" else None,
        },
    )
    return obj


def invoice_object(
    invoice_id: str,
    created: int,
    *,
    status: str = "draft",
    lines: Sequence[str] = ("a",),
    stamps: Mapping[str, int | None] | None = None,
    payment: Obj | None = None,
    note: str | None = None,
) -> Obj:
    obj = copy.deepcopy(INVOICE_TEMPLATE)
    total = sum(LINE_AMOUNTS[letter] for letter in lines)
    paid = status == "paid"
    obj.update(
        id=invoice_id,
        created=created,
        period_start=created,
        period_end=created,
        status=status,
        status_transitions={**NO_STAMPS, **(stamps or {})},
        number=None if status == "draft" else f"SYNC-{invoice_id[-1].upper()}",
        amount_due=total,
        amount_paid=total if paid else 0,
        amount_remaining=0 if paid else total,
        subtotal=total,
        subtotal_excluding_tax=total,
        total=total,
        total_excluding_tax=total,
        metadata={"note": note} if note else {},
        lines={
            "object": "list",
            "data": [line(invoice_id, letter) for letter in lines],
            "has_more": False,
            "url": f"/v1/invoices/{invoice_id}/lines",
        },
        payments={
            "object": "list",
            "data": [] if payment is None else [payment],
            "has_more": False,
            "url": f"/v1/invoice_payments?invoice={invoice_id}",
        },
    )
    return obj


def meter_object(meter_id: str, created: int, updated: int, *, active: bool = True, name: int = 0) -> Obj:
    obj: Obj = METER_TEMPLATE | {
        "id": meter_id,
        "created": created,
        "updated": updated,
        "status": "active" if active else "inactive",
        "status_transitions": {"deactivated_at": None if active else updated},
        "display_name": "API requests" if name == 0 else f"API requests (v{name + 1})",
    }
    return obj


def item_object(item_id: str, date: int) -> Obj:
    return item(item_id, date, amount=100 * (ord(item_id[-1]) - ord("a") + 1), description=f"Item {item_id}")


def deletion(obj: Obj, *, stub: bool) -> Obj:
    """The object of an invoiceitem.deleted or invoice.deleted event: Stripe's stub, or the whole
    object (an item marked deleted, a draft invoice as it was)."""
    if stub:
        return {"id": obj["id"], "object": obj["object"], "deleted": True}
    return obj | {"deleted": True} if obj["object"] == "invoiceitem" else obj


# ---- events and pages, and what each says about which object ----------------------------------


@dataclass(frozen=True)
class Sent:
    """An event or a fetched page, as it will be delivered, with what it says about each object
    (the object's state at ``at``) and the objects it deletes."""

    event: Event
    at: Moment
    shows: dict[Key, Obj]
    deletes: frozenset[Key] = frozenset()


def shows_of(obj: Obj) -> dict[Key, Obj]:
    """The objects a Stripe object carries: itself (unless it is a deletion stub), an invoice's payments."""
    if set(obj) <= {"id", "object", "deleted"}:
        return {}
    shown = {(OBJECT_TABLES[obj["object"]], obj["id"]): obj}
    if obj["object"] == "invoice":
        for payment in obj["payments"]["data"]:
            shown.update(shows_of(payment))
    return shown


def event(event_type: str, obj: Obj, at: Moment | int) -> Sent:
    """The event Stripe creates for a change at ``at`` (its id does not sort by time, as Stripe's do not)."""
    moment = at if isinstance(at, tuple) else (at, 4)
    digest = hashlib.blake2b(f"{event_type}|{obj['id']}|{moment}".encode(), digest_size=12).hexdigest()
    body = make_event(event_type, obj, event_id=f"evt_{digest}", created=moment[0])
    deleted = event_type.endswith(".deleted")
    deletes = frozenset({(OBJECT_TABLES[obj["object"]], obj["id"])}) if deleted else frozenset()
    return Sent(parse_event(encode(body)), moment, shows_of(obj), deletes)


def page(table: str, objects: Sequence[Obj], at: Moment | int, *, has_more: bool = False) -> Sent:
    """A page of a Stripe list read by sync at ``at``, as the snapshot event sync stores."""
    moment = at if isinstance(at, tuple) else (at, 5)
    object_name, url, _ = LISTS[table]
    snapshot = snapshot_event(
        object_name,
        copy.deepcopy(list(objects)),
        fetched_at=moment[0],
        url=url,
        origin=EventSource.SYNC,
        api_version=API_VERSION,
        livemode=False,
        has_more=has_more,
    )
    shown: dict[Key, Obj] = {}
    for obj in objects:
        shown.update(shows_of(obj))
    return Sent(snapshot, moment, shown)


# ---- the account: its history, and the pages read from it ------------------------------------


@dataclass
class Account:
    """Stripe's side: every change of every object as it happened, and what was sent meanwhile."""

    changes: list[tuple[Moment, Key, Obj | None]] = field(default_factory=list)  # None: deleted
    sent: list[Sent] = field(default_factory=list)

    def change(self, at: Moment, objects: Iterable[Obj], *events: tuple[str, Obj]) -> None:
        for obj in objects:
            self.changes.append((at, (OBJECT_TABLES[obj["object"]], obj["id"]), obj))
        self.sent.extend(event(event_type, obj, at) for event_type, obj in events)

    def delete(self, at: Moment, obj: Obj, *, stub: bool) -> None:
        """Delete an invoice item or a draft invoice."""
        self.changes.append((at, (OBJECT_TABLES[obj["object"]], obj["id"]), None))
        self.sent.append(event(f"{obj['object']}.deleted", deletion(obj, stub=stub), at))

    def state_at(self, at: Moment) -> dict[Key, Obj]:
        """Every object that exists at ``at``, as it is then (changes before ``at`` are visible)."""
        state: dict[Key, Obj] = {}
        for moment, key, obj in sorted(self.changes, key=lambda change: change[0]):
            if moment >= at:
                break
            if obj is None:
                state.pop(key)
            else:
                state[key] = obj
        return state

    def fetch(self, table: str, at: Moment, start: int = 0, limit: int = 100) -> None:
        """Read a page of a list at ``at``: newest first (creation time, then id), deleted objects out."""
        _, _, created = LISTS[table]
        listed = sorted(
            (obj for key, obj in self.state_at(at).items() if key[0] == table),
            key=lambda obj: (obj[created], obj["id"]),
            reverse=True,
        )
        self.sent.append(page(table, listed[start : start + limit], at, has_more=start + limit < len(listed)))

    def final(self) -> Mirror:
        """Stripe's final state as the mirror keeps it: every object as it last was (a deleted item or
        invoice as it was before its deletion, with a tombstone naming the deleting event)."""
        last: dict[Key, Obj] = {}
        for _, key, obj in sorted(self.changes, key=lambda change: change[0]):
            if obj is not None:
                last[key] = obj
        tombstones = {key: sent.event.id for sent in self.sent for key in sent.deletes}
        return mirror_of(last, tombstones)


# ---- plans: what hypothesis draws ---------------------------------------------------------------


@dataclass(frozen=True)
class ItemPlan:
    item_id: str
    created: Moment
    deleted: Moment | None
    stub: bool


@dataclass(frozen=True)
class InvoicePlan:
    invoice_id: str
    created: Moment
    lines: tuple[str, ...]
    redrafted: tuple[Moment, tuple[str, ...]] | None  # the draft's lines changed
    finalized: Moment | None
    noted: Moment | None  # metadata changed while open
    ended: tuple[Moment, str] | None  # paid or void
    deleted: tuple[Moment, bool] | None = None  # a draft deleted, its event carrying the stub (True) or not


@dataclass(frozen=True)
class MeterPlan:
    meter_id: str
    created: Moment
    changes: tuple[tuple[Moment, str], ...]  # toggle (deactivate / reactivate) or rename


@dataclass(frozen=True)
class Fetch:
    table: str
    at: Moment
    start: int
    limit: int


@dataclass(frozen=True)
class Plan:
    items: tuple[ItemPlan, ...]
    invoices: tuple[InvoicePlan, ...]
    meter: MeterPlan
    fetches: tuple[Fetch, ...]


def play_invoice(account: Account, plan: InvoicePlan) -> None:
    invoice_id, created = plan.invoice_id, plan.created[0]
    payment_id = f"inpay_{invoice_id[3:]}"
    lines, stamps, note = plan.lines, dict(NO_STAMPS), None
    draft = invoice_object(invoice_id, created, lines=lines)
    account.change(plan.created, [draft], ("invoice.created", draft))
    if plan.redrafted is not None:
        at, lines = plan.redrafted
        draft = invoice_object(invoice_id, created, lines=lines)
        account.change(at, [draft], ("invoice.updated", draft))
    if plan.deleted is not None:
        account.delete(plan.deleted[0], draft, stub=plan.deleted[1])
    if plan.finalized is None:
        return
    at = plan.finalized
    stamps["finalized_at"] = at[0]
    payment = payment_object(payment_id, invoice_id, at[0], "open")
    opened = invoice_object(invoice_id, created, status="open", lines=lines, stamps=stamps, payment=payment)
    account.change(at, [opened, payment], ("invoice.finalized", opened))
    if plan.noted is not None:
        note = "reminded"
        opened = invoice_object(
            invoice_id, created, status="open", lines=lines, stamps=stamps, payment=payment, note=note
        )
        account.change(plan.noted, [opened], ("invoice.updated", opened))
    if plan.ended is None:
        return
    at, how = plan.ended
    status, payment_status = ("paid", "paid") if how == "paid" else ("void", "canceled")
    stamps["paid_at" if how == "paid" else "voided_at"] = at[0]
    payment = payment_object(payment_id, invoice_id, payment["created"], payment_status, at[0])
    ended = invoice_object(
        invoice_id, created, status=status, lines=lines, stamps=stamps, payment=payment, note=note
    )
    if how == "paid":
        events = [
            ("invoice_payment.paid", payment),
            ("invoice.payment_succeeded", ended),
            ("invoice.paid", ended),
        ]
    else:
        events = [("invoice.voided", ended)]
    account.change(at, [ended, payment], *events)


def play_meter(account: Account, plan: MeterPlan) -> None:
    created = plan.created[0]
    active, name = True, 0
    meter = meter_object(plan.meter_id, created, created)
    account.change(plan.created, [meter], ("billing.meter.created", meter))
    for at, kind in plan.changes:
        if kind == "toggle":
            active = not active
            event_type = "billing.meter.reactivated" if active else "billing.meter.deactivated"
        else:
            name += 1
            event_type = "billing.meter.updated"
        meter = meter_object(plan.meter_id, created, at[0], active=active, name=name)
        account.change(at, [meter], (event_type, meter))


def play(plan: Plan) -> Account:
    account = Account()
    for item_plan in plan.items:
        obj = item_object(item_plan.item_id, item_plan.created[0])
        account.change(item_plan.created, [obj], ("invoiceitem.created", obj))
        if item_plan.deleted is not None:
            account.delete(item_plan.deleted, obj, stub=item_plan.stub)
    for invoice_plan in plan.invoices:
        play_invoice(account, invoice_plan)
    play_meter(account, plan.meter)
    for fetch in plan.fetches:
        account.fetch(fetch.table, fetch.at, fetch.start, fetch.limit)
    return account


def later(draw: st.DrawFn, previous: Moment | None, *, forward: bool = False) -> Moment:
    """A moment for the next change of an object: in the same second as its previous change only
    when the change moves its status forward (``forward``)."""
    if previous is None:
        return T0 + draw(st.integers(0, 3)), draw(st.sampled_from(CHANGE_TICKS))
    second, tick = previous
    if forward and tick < CHANGE_TICKS[-1] and draw(st.booleans()):
        return second, draw(st.sampled_from([later_tick for later_tick in CHANGE_TICKS if later_tick > tick]))
    return second + draw(st.integers(1, 2)), draw(st.sampled_from(CHANGE_TICKS))


def fetched_around(change: Moment, when: str, tick: int) -> Moment:
    """The moment of a fetch near a change (``tick``: any fetch tick, for a fetch in another second)."""
    second, change_tick = change
    if when == "just before":
        return (second, change_tick - 1) if change_tick else (second - 1, FETCH_TICKS[-1])
    if when == "just after":
        return second, change_tick + 1
    return second + (1 if when == "second after" else -1), tick


LINE_SETS = st.lists(st.sampled_from(sorted(LINE_AMOUNTS)), min_size=1, max_size=3, unique=True).map(tuple)


@st.composite
def invoice_plans(draw: st.DrawFn, invoice_id: str) -> InvoicePlan:
    created = at = later(draw, None)
    lines = draw(LINE_SETS)
    redrafted = finalized = noted = ended = deleted = None
    if draw(st.booleans()):
        at = later(draw, at)
        redrafted = (at, draw(LINE_SETS.filter(lambda other: other != lines)))
    if draw(st.booleans()):
        finalized = at = later(draw, at, forward=True)
        if draw(st.booleans()):
            noted = at = later(draw, at)
        if draw(st.booleans()):
            ended = (later(draw, at, forward=True), draw(st.sampled_from(("paid", "void"))))
    elif draw(st.booleans()):
        deleted = (later(draw, at, forward=True), draw(st.booleans()))
    return InvoicePlan(invoice_id, created, lines, redrafted, finalized, noted, ended, deleted)


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    items = []
    for item_id in ("ii_sync_a", "ii_sync_b", "ii_sync_c"):
        created = later(draw, None)
        deleted = later(draw, created, forward=True) if draw(st.booleans()) else None
        items.append(ItemPlan(item_id, created, deleted, draw(st.booleans())))
    invoices = tuple(draw(invoice_plans(invoice_id)) for invoice_id in ("in_sync_a", "in_sync_b"))
    meter_created = at = later(draw, None)
    meter_changes = []
    for _ in range(draw(st.integers(0, 3))):
        at = later(draw, at)
        meter_changes.append((at, draw(st.sampled_from(("toggle", "rename")))))
    meter = MeterPlan("mtr_sync_a", meter_created, tuple(meter_changes))
    # Each fetch reads the list of an object that changes, mostly just before or just after the change
    # in the same second (where the ties are), else in the second before or after; mostly first pages
    # (a limit of 100 reads the whole list).
    changes = sorted({(at, key[0]) for at, key, _ in play(Plan(tuple(items), invoices, meter, ())).changes})
    fetch = st.builds(
        lambda change, when, tick, start, limit: Fetch(
            change[1], fetched_around(change[0], when, tick), start, limit
        ),
        st.sampled_from(changes),
        st.sampled_from(
            ("just before", "just after", "just before", "just after", "second before", "second after")
        ),
        st.sampled_from(FETCH_TICKS),
        st.sampled_from((0, 0, 1)),
        st.sampled_from((100, 1, 2)),
    )
    return Plan(tuple(items), invoices, meter, tuple(draw(st.lists(fetch, min_size=1, max_size=8))))


# ---- the mirror, read back, and what it should hold -----------------------------------------


@dataclass(frozen=True)
class Mirror:
    """What the mirror says about the objects: each row's payload (an item's without its ``deleted``
    flag: the tombstone says that), each invoice's lines in order, and the tombstones with the event
    that set them."""

    objects: dict[Key, Obj | None]
    lines: dict[str, list[Obj]]
    tombstones: dict[Key, str]


def without_deleted(obj: Obj) -> Obj:
    return {name: value for name, value in obj.items() if name != "deleted"}


def mirror_of(objects: dict[Key, Obj], tombstones: dict[Key, str]) -> Mirror:
    """The Mirror that shows ``objects`` (a tombstoned item without any: a row without payload)."""
    shown: dict[Key, Obj | None] = dict.fromkeys(tombstones)
    shown.update({key: without_deleted(obj) for key, obj in objects.items()})
    lines = {key[1]: obj["lines"]["data"] for key, obj in objects.items() if key[0] == "invoices"}
    return Mirror(shown, lines, tombstones)


def same_second_rank(key: Key, obj: Obj) -> Any:
    """What orders two snapshots of an object within one second: an invoice's or a payment's status
    and how many of its status-transition stamps are set, a meter's ``updated``."""
    if key[0] in ("invoices", "invoice_payments"):
        stamps = obj["status_transitions"].values()
        return obj["status"], sum(stamp is not None for stamp in stamps)
    return obj.get("updated")


def newest(sent: Iterable[Sent], held: Mirror | None = None) -> Mirror:
    """What the mirror must show once ``sent`` is delivered: for each object, what the newest of them
    (by the moment of its change or fetch) says about it; a tombstone for every item deleted.

    Except for what no mirror can know: which of two pages read in the same second was read first
    (Stripe dates a response by the second). When the newest thing said about an object is a page,
    and a page of the same second shows it with the same rank (``same_second_rank``) but otherwise
    differently, the mirror may show either (``held``, the mirror as read, says which) until the
    event of the change between them arrives: created in that second, it wins over both pages."""
    delivered = list(sent)
    found: dict[Key, Sent] = {}
    tombstones: dict[Key, str] = {}
    for one in delivered:
        for key in one.shows:
            if key not in found or one.at > found[key].at:
                found[key] = one
        for key in one.deletes:
            tombstones[key] = one.event.id
    objects = {key: one.shows[key] for key, one in found.items()}
    for key, last in found.items():
        if held is None or not is_snapshot(last.event.type):
            continue
        rank = same_second_rank(key, last.shows[key])
        tied = [
            without_deleted(one.shows[key])
            for one in delivered
            if key in one.shows
            and is_snapshot(one.event.type)
            and one.at[0] == last.at[0]
            and same_second_rank(key, one.shows[key]) == rank
        ]
        if held.objects.get(key) in tied:
            objects[key] = held.objects[key]  # type: ignore[assignment]
    return mirror_of(objects, tombstones)


# Columns of each table, and where the payload holds the same value.
COLUMNS: dict[str, dict[str, tuple[str, ...]]] = {
    "invoices": {
        "status": ("status",),
        "finalized_at": ("status_transitions", "finalized_at"),
        "paid_at": ("status_transitions", "paid_at"),
        "voided_at": ("status_transitions", "voided_at"),
        "amount_paid": ("amount_paid",),
        "total": ("total",),
    },
    "invoice_payments": {
        "status": ("status",),
        "paid_at": ("status_transitions", "paid_at"),
        "canceled_at": ("status_transitions", "canceled_at"),
        "amount_paid": ("amount_paid",),
    },
    "billing_meters": {
        "status": ("status",),
        "deactivated_at": ("status_transitions", "deactivated_at"),
        "updated": ("updated",),
        "display_name": ("display_name",),
    },
    "invoice_items": {"amount": ("amount",), "date": ("date",), "invoice": ("invoice",)},
}


def at_path(obj: Obj, path: tuple[str, ...]) -> Any:
    value: Any = obj
    for name in path:
        value = value[name]
    return value


def read_mirror(engine: Engine) -> Mirror:
    """What the mirror holds, read back (checking on the way that every row's columns agree with its
    payload, and that no invoice's lines are marked incomplete)."""
    objects: dict[Key, Obj | None] = {}
    tombstones: dict[Key, str] = {}
    for table in OBJECT_TABLES.values():
        for row in rows(engine, table):
            key = (table, row["id"])
            payload = None if row["payload"] is None else without_deleted(json.loads(row["payload"]))
            objects[key] = payload
            if row.get("deleted"):
                tombstones[key] = row["deleted_by_event_id"]
            if payload is not None:  # the columns say what the payload says
                assert {column: row[column] for column in COLUMNS[table]} == {
                    column: at_path(payload, path) for column, path in COLUMNS[table].items()
                }, row
            if table == "invoices" and payload is not None:
                assert row["lines_incomplete"] is False, row
    lines: dict[str, list[Obj]] = {}
    for row in sorted(rows(engine, "invoice_line_items"), key=lambda row: (row["invoice"], row["position"])):
        lines.setdefault(row["invoice"], []).append(json.loads(row["payload"]))
    return Mirror(objects, lines, tombstones)


MIRROR_TABLES = (
    "invoices",
    "invoice_line_items",
    "invoice_line_sets",
    "invoice_item_invoices",
    "invoice_items",
    "invoice_payments",
    "billing_meters",
)


def tables_of(mirror: Dump) -> Dump:
    return {name: mirror[name] for name in MIRROR_TABLES}


def ingest(engine: Engine, events: Sequence[Event]) -> None:
    """One batch, as the receiver ingests it: stored and applied in one transaction."""
    for result in EventStore(engine).ingest(list(events)):
        assert isinstance(result, IngestResult) and result.error is None, result


def batches(order: list[int], batch_sizes: list[int]) -> Iterator[list[int]]:
    position, sizes = 0, iter(batch_sizes)
    while position < len(order):
        size = next(sizes, len(order))
        yield order[position : position + size]
        position += size


# ---- the property ---------------------------------------------------------------------------


@st.composite
def backfills(draw: st.DrawFn) -> tuple[Plan, list[int], list[int]]:
    """An account's history with fetches during it, and the order and batches of every delivery."""
    plan = draw(plans())
    order, batch_sizes = draw(deliveries(len(play(plan).sent)))
    return plan, order, batch_sizes


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(backfill=backfills())
def test_pages_and_events_in_any_interleaving_end_at_stripes_final_state(
    engine: Engine, backfill: tuple[Plan, list[int], list[int]]
) -> None:
    plan, order, batch_sizes = backfill
    account = play(plan)
    reset(engine)
    delivered: list[Sent] = []
    for batch in batches(order, batch_sizes):
        ingest(engine, [account.sent[index].event for index in batch])
        delivered.extend(account.sent[index] for index in batch)
        held = read_mirror(engine)
        assert held == newest(delivered, held)
    assert read_mirror(engine) == account.final()
    # And the rows, their versions included, are those of the same pages and events in one batch.
    interleaved = tables_of(dump(engine))
    reset(engine)
    ingest(engine, [sent.event for sent in account.sent])
    assert tables_of(dump(engine)) == interleaved


# ---- the rules, one example each --------------------------------------------------------------

T = T0 + 1000
INVOICE = "in_rule_a"
PAYMENT = "inpay_rule_a"
METER = "mtr_rule_a"
ITEM = "ii_rule_a"
OPEN_PAYMENT = payment_object(PAYMENT, INVOICE, T - 5, "open")
FINALIZED = {"finalized_at": T - 5}
OPEN = invoice_object(INVOICE, T - 10, status="open", stamps=FINALIZED, payment=OPEN_PAYMENT)


def paid_payment(at: int) -> Obj:
    return payment_object(PAYMENT, INVOICE, T - 5, "paid", at)


def paid_invoice(at: int) -> Obj:
    return invoice_object(
        INVOICE, T - 10, status="paid", stamps=FINALIZED | {"paid_at": at}, payment=paid_payment(at)
    )


def holder(engine: Engine, key: Key) -> str:
    """The event whose version the row holds."""
    [row] = rows(engine, key[0], id=key[1])
    return str(row["last_event_id"])


def assert_in_every_order(engine: Engine, sent: Sequence[Sent], key: Key, winner: Sent) -> None:
    """Whatever the order ``sent`` arrives in (one transaction each), ``key`` ends with ``winner``'s
    version, showing what ``winner`` says about it."""
    for order in itertools.permutations(sent):
        reset(engine)
        for one in order:
            ingest(engine, [one.event])
        mirror = read_mirror(engine)
        expected = newest([winner])
        assert mirror.objects[key] == expected.objects[key], [one.event.id for one in order]
        if key[0] == "invoices":
            assert mirror.lines[key[1]] == expected.lines[key[1]]
        assert holder(engine, key) == winner.event.id, [one.event.id for one in order]


def draft(lines: Sequence[str]) -> Obj:
    return invoice_object(INVOICE, T - 10, lines=lines)


def meter(updated: int, *, active: bool = True, name: int = 0) -> Obj:
    return meter_object(METER, T - 100, updated, active=active, name=name)


ITEM_OBJECT = item_object(ITEM, T - 50)


def test_an_event_created_after_the_fetch_wins_whichever_arrives_first(engine: Engine) -> None:
    cases: list[tuple[Sent, Sent]] = [
        (page("invoices", [draft("ab")], T), event("invoice.updated", draft("ac"), T + 1)),
        (page("invoices", [OPEN], T), event("invoice.paid", paid_invoice(T + 1), T + 1)),
        (
            page("invoice_payments", [OPEN_PAYMENT], T),
            event("invoice_payment.paid", paid_payment(T + 1), T + 1),
        ),
        (
            page("billing_meters", [meter(T - 50)], T),
            event("billing.meter.deactivated", meter(T + 1, active=False), T + 1),
        ),
        (page("invoice_items", [ITEM_OBJECT], T), event("invoiceitem.created", ITEM_OBJECT, T + 1)),
    ]
    for fetched, later_event in cases:
        for key in later_event.shows.keys() & fetched.shows.keys():
            assert_in_every_order(engine, [fetched, later_event], key, later_event)


def test_a_fetch_wins_over_an_event_created_before_it_whichever_arrives_first(engine: Engine) -> None:
    cases: list[tuple[Sent, Sent]] = [
        # The draft's lines changed between the event and the fetch (that change's event is still on its way).
        (event("invoice.created", draft("ab"), T - 1), page("invoices", [draft("ac")], T)),
        (event("invoice.finalized", OPEN, T - 1), page("invoices", [OPEN | {"metadata": {"note": "x"}}], T)),
        (
            event("billing.meter.deactivated", meter(T - 1, active=False), T - 1),
            page("billing_meters", [meter(T)], T),
        ),
        # The same object: the fetch's version holds it.
        (
            event("invoice_payment.paid", paid_payment(T - 1), T - 1),
            page("invoice_payments", [paid_payment(T - 1)], T),
        ),
        (event("invoiceitem.created", ITEM_OBJECT, T - 1), page("invoice_items", [ITEM_OBJECT], T)),
    ]
    for earlier_event, fetched in cases:
        for key in earlier_event.shows.keys() & fetched.shows.keys():
            assert_in_every_order(engine, [earlier_event, fetched], key, fetched)


def test_within_one_second_the_event_wins_unless_the_fetch_is_further_along(engine: Engine) -> None:
    invoice_key, payment_key = ("invoices", INVOICE), ("invoice_payments", PAYMENT)
    opened = event("invoice.finalized", OPEN, (T, 2))
    fetched_paid = page("invoices", [paid_invoice(T)], (T, 7))  # paid at (T, 4)
    paid = event("invoice.paid", paid_invoice(T), (T, 4))
    # Same status: the event of that second wins, the page being read before or after it.
    changed = event("invoice.updated", draft("ac"), (T, 4))
    assert_in_every_order(engine, [page("invoices", [draft("ab")], (T, 1)), changed], invoice_key, changed)
    assert_in_every_order(engine, [page("invoices", [draft("ac")], (T, 7)), changed], invoice_key, changed)
    deactivated = event("billing.meter.deactivated", meter(T, active=False), (T, 4))
    assert_in_every_order(
        engine,
        [page("billing_meters", [meter(T - 3)], (T, 1)), deactivated],
        ("billing_meters", METER),
        deactivated,
    )
    created = event("invoiceitem.created", ITEM_OBJECT, (T, 4))
    assert_in_every_order(
        engine, [page("invoice_items", [ITEM_OBJECT], (T, 7)), created], ("invoice_items", ITEM), created
    )
    # Further along: a page read after the invoice was paid (or finalized) wins over the finalization
    # (or the creation) of that second, for the invoice and for its payment; and the paid event of that
    # second, once it arrives, wins over the page (the same snapshot, and an event).
    assert_in_every_order(engine, [opened, fetched_paid], invoice_key, fetched_paid)
    assert_in_every_order(engine, [opened, fetched_paid], payment_key, fetched_paid)
    fetched_open = page("invoices", [OPEN], (T, 7))
    assert_in_every_order(
        engine, [event("invoice.created", draft("a"), (T, 2)), fetched_open], invoice_key, fetched_open
    )
    payments_page = page("invoice_payments", [paid_payment(T)], (T, 7))
    assert_in_every_order(engine, [opened, payments_page], payment_key, payments_page)
    assert_in_every_order(engine, [opened, fetched_paid, paid], invoice_key, paid)


@pytest.mark.parametrize("stub", [True, False], ids=["stub", "whole_object"])
@pytest.mark.parametrize("obj", [ITEM_OBJECT, draft("ab")], ids=["item", "draft_invoice"])
def test_a_tombstone_is_never_cleared_by_a_page_read_before_the_deletion(
    engine: Engine, obj: Obj, stub: bool
) -> None:
    table, name = OBJECT_TABLES[obj["object"]], obj["object"]
    key = (table, obj["id"])
    created = event(f"{name}.created", obj, T - 3)
    deleted = event(f"{name}.deleted", deletion(obj, stub=stub), (T, 4))
    # Read the second before, and in the second of the deletion but before it; then after it.
    pages = [page(table, [obj], T - 1), page(table, [obj], (T, 1))]
    after = page(table, [], (T + 1, 1))
    for order in itertools.permutations([created, *pages, deleted]):
        reset(engine)
        for one in [*order, after]:
            ingest(engine, [one.event])
        mirror = read_mirror(engine)
        assert mirror.tombstones == {key: deleted.event.id}, [one.event.id for one in order]
        assert mirror == mirror_of({key: obj}, {key: deleted.event.id})


@pytest.mark.parametrize("ending", ["paid", "void"])
def test_a_terminal_status_is_never_replaced_by_a_later_page(engine: Engine, ending: str) -> None:
    """Even a page read after the invoice was paid (or voided) that still shows it open (a list that
    lags) does not bring it back: paid and void are terminal, and so are paid and canceled payments."""
    if ending == "paid":
        final = paid_invoice(T)
        ended = event("invoice.paid", final, T)
    else:
        canceled = payment_object(PAYMENT, INVOICE, T - 5, "canceled", T)
        final = invoice_object(
            INVOICE, T - 10, status="void", stamps=FINALIZED | {"voided_at": T}, payment=canceled
        )
        ended = event("invoice.voided", final, T)
    lagging = [
        page("invoices", [OPEN], T + 1),
        page("invoice_payments", [OPEN_PAYMENT], T + 2),
        event("invoice.finalized", OPEN, T - 5),
    ]
    for order in itertools.permutations([ended, *lagging]):
        reset(engine)
        for one in order:
            ingest(engine, [one.event])
        mirror = read_mirror(engine)
        expected = newest([ended])
        assert mirror.objects[("invoices", INVOICE)] == final, [one.event.id for one in order]
        assert (
            mirror.objects[("invoice_payments", PAYMENT)] == expected.objects[("invoice_payments", PAYMENT)]
        )
