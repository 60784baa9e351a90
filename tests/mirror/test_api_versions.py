"""One history, eight API versions: the recordings of tests/fixtures/versions (see make_versions.py
there) replayed into a fresh mirror on both databases read back the same, on the SQL columns and
through the read API, whatever the shape Stripe rendered them in (legacy 2020-08-27 ... 2024-06-20,
acacia, basil, clover, dahlia)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from sqlalchemy import Engine
from sqlmodel import SQLModel
from starlette.testclient import TestClient

from app.ingest.apply import IngestResult
from app.ingest.store import EventStore
from app.mirror.envelope import parse_event
from app.mirror.outcome import Outcome
from app.testing.dump import Dump, dump, rows
from tests.support import FIXTURES, get, ids, item_state, one, reset

VERSIONS_DIR = FIXTURES / "versions"
VERSIONS = (
    "2020-08-27",
    "2022-11-15",
    "2023-10-16",
    "2024-06-20",
    "2024-09-30.acacia",
    "2025-03-31.basil",
    "2025-09-30.clover",
    "2026-07-29.dahlia",
)
NEWEST = "2026-07-29.dahlia"


def since(version: str, date: str) -> bool:
    """``version`` renders what Stripe introduced at ``date`` (the release suffix does not matter)."""
    return version[:10] >= date


def basil(version: str) -> bool:
    return since(version, "2025-03-31")


def legacy(version: str) -> bool:
    return not basil(version)


def with_item_updated(version: str) -> bool:
    """The files of the versions released before Stripe removed invoiceitem.updated carry one."""
    return not since(version, "2024-01-01")


# The history, as make_versions.py writes it in every file.
T0 = 1_771_200_000  # 2026-02-16T00:00:00Z
FINALIZED_AT = T0 + 3600
PAID_AT = T0 + 3602
ALERT_AT = T0 + 7200
OLD_DESCRIPTION = "Onboarding workshop"
NEW_DESCRIPTION = "Onboarding workshop (2 sessions)"
TOTAL = 8068
MISSING = "<no such column>"


def path_of(version: str) -> Path:
    return VERSIONS_DIR / f"{version}.jsonl"


def lines_of(version: str) -> list[str]:
    return path_of(version).read_text(encoding="utf-8").splitlines()


def label(line: str) -> str:
    """What an event is about, the same in every file: ``type object-id``."""
    event = json.loads(line)
    obj = event["data"]["object"]
    about = obj.get("id") or obj.get("alert", {}).get("id")
    return f"{event['type']} {about}"


def event_line(version: str, event_type: str) -> str:
    [found] = [line for line in lines_of(version) if json.loads(line)["type"] == event_type]
    return found


def ingest_lines(engine: Engine, lines: list[str]) -> list[IngestResult]:
    """Each recorded line, exactly as recorded, in file order, one transaction each (as delivered)."""
    store = EventStore(engine)
    results = []
    for line in lines:
        [result] = store.ingest([parse_event(line.encode())])
        assert isinstance(result, IngestResult), result
        results.append(result)
    return results


def replay(engine: Engine, version: str) -> list[IngestResult]:
    return ingest_lines(engine, lines_of(version))


def columns(row: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """The named columns of a row; a column the schema does not have (yet) reads MISSING."""
    return {name: row.get(name, MISSING) for name in names}


def by_id(engine: Engine, table: str) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in rows(engine, table)}


by_version = pytest.mark.parametrize("version", VERSIONS)


# ---- the files themselves ---------------------------------------------------------------------


def test_one_file_per_version_with_the_history_of_its_era() -> None:
    assert sorted(path.name for path in VERSIONS_DIR.glob("*.jsonl")) == sorted(
        path_of(version).name for version in VERSIONS
    )
    every_id: list[str] = []
    for version in VERSIONS:
        events = [json.loads(line) for line in lines_of(version)]
        assert {event["api_version"] for event in events} == {version}
        every_id += [event["id"] for event in events]
        expected = ["invoiceitem.created ii_one", "invoiceitem.created ii_prorate"]
        expected += ["invoiceitem.updated ii_one"] if with_item_updated(version) else []
        expected += ["invoice.created in_1", "invoice.finalized in_1"]
        expected += ["invoice_payment.paid inpay_1"] if basil(version) else []
        expected += ["invoice.paid in_1", "billing.alert.triggered alrt_1"]
        assert [label(line) for line in lines_of(version)] == expected, version
        created = [event["created"] for event in events]
        assert created == sorted(created) and created[-1] == ALERT_AT
        paid = [event for event in events if event["type"] in ("invoice.paid", "invoice_payment.paid")]
        assert {event["created"] for event in paid} == {PAID_AT}  # one second for both
        assert [event["id"] for event in events] != sorted(event["id"] for event in events)
    assert len(set(every_id)) == len(every_id)


def test_every_shape_carries_the_same_money() -> None:
    """The paid invoice of every file: the same lines, amounts and tax, each in its era's shape."""
    for version in VERSIONS:
        invoice = json.loads(event_line(version, "invoice.paid"))["data"]["object"]
        lines = invoice["lines"]["data"]
        assert [line["id"] for line in lines] == ["il_1", "il_2", "il_3"], version
        assert [line["amount"] for line in lines] == [1000, 6000, 968], version
        assert (invoice["subtotal"], invoice["total"], invoice["amount_paid"]) == (7968, TOTAL, TOTAL)
        if legacy(version):
            assert [line["type"] for line in lines] == ["invoiceitem", "subscription", "invoiceitem"]
            assert all(isinstance(line["price"], dict) and "pricing" not in line for line in lines)
            taxes = [tax["amount"] for line in lines for tax in line["tax_amounts"]]
            assert taxes == [100] and invoice["tax"] == 100 and "parent" not in invoice, version
            assert [tax["amount"] for tax in invoice["total_tax_amounts"]] == [100]
            assert (invoice["charge"], invoice["payment_intent"]) == ("ch_1", "pi_1")
        else:
            assert all("type" not in line and "price" not in line for line in lines), version
            taxes = [tax["amount"] for line in lines for tax in line["taxes"]]
            assert taxes == [100] and "tax" not in invoice and "subscription" not in invoice, version
            assert [tax["amount"] for tax in invoice["total_taxes"]] == [100]
            assert "charge" not in invoice and "payment_intent" not in invoice
        assert ("rendering_options" in invoice) == (not since(version, "2024-04-10")), version
        alert = json.loads(event_line(version, "billing.alert.triggered"))["data"]["object"]["alert"]
        assert ("usage_threshold" in alert) == since(version, "2024-09-30"), version
        assert ("usage_threshold_config" in alert) == (not since(version, "2024-09-30")), version


# ---- each file, read back: one comparison of every section, so a failure shows them all -------

INVOICE_COLUMNS = (
    "customer",
    "status",
    "finalized_at",
    "paid_at",
    "subscription",
    "parent_type",
    "quote",
    "charge",
    "payment_intent",
    "amount_due",
    "amount_paid",
    "amount_remaining",
    "amount_overpaid",
    "subtotal",
    "total",
    "total_excluding_tax",
    "lines_incomplete",
)
LINE_COLUMNS = (
    "invoice",
    "position",
    "parent_type",
    "invoice_item",
    "subscription_item",
    "subscription",
    "proration",
    "price",
    "product",
    "quantity",
    "quantity_decimal",
    "unit_amount_decimal",
    "amount",
)
ITEM_COLUMNS = (
    "customer",
    "invoice",
    "description",
    "amount",
    "price",
    "product",
    "parent_type",
    "subscription",
    "subscription_item",
    "proration",
    "quantity",
    "quantity_decimal",
    "unit_amount_decimal",
    "deleted",
)
ALERT_COLUMNS = ("alert_type", "status", "title", "meter", "gte", "recurrence", "customer")
TRIGGER_COLUMNS = ("alert", "customer", "value", "created")
PAYMENT_COLUMNS = ("invoice", "status", "payment_type", "payment_id", "amount_paid", "paid_at", "is_default")


def outcome_of(result: IngestResult) -> str:
    """Applied, or stale for a same-second tie, are both right; anything else is shown as it is."""
    if result.outcome in (Outcome.APPLIED, Outcome.STALE) and not result.duplicate and not result.error:
        return "applied|stale"
    return f"{result.outcome.value} duplicate={result.duplicate} error={result.error}"


def read_back(engine: Engine, version: str, results: list[IngestResult]) -> dict[str, Any]:
    """What the mirror holds after one file, section by section."""
    found: dict[str, Any] = {
        "outcomes": {
            label(line): outcome_of(result) for line, result in zip(lines_of(version), results, strict=True)
        },
        "api_versions": sorted({row["api_version"] for row in rows(engine, "stripe_events")}),
        "invoices": {key: columns(row, INVOICE_COLUMNS) for key, row in by_id(engine, "invoices").items()},
        "lines": {
            key: columns(row, LINE_COLUMNS) for key, row in by_id(engine, "invoice_line_items").items()
        },
        "items": {key: columns(row, ITEM_COLUMNS) for key, row in by_id(engine, "invoice_items").items()},
        "items_for_a_reader": {key: item_state(engine, key) for key in by_id(engine, "invoice_items")},
        "alerts": {key: columns(row, ALERT_COLUMNS) for key, row in by_id(engine, "billing_alerts").items()},
        "triggers": {
            row["alert"]: columns(row, TRIGGER_COLUMNS) for row in rows(engine, "billing_alert_triggers")
        },
    }
    if basil(version):  # legacy shapes have no invoice payment (what a handler derives is not checked)
        payments = by_id(engine, "invoice_payments")
        found["payments"] = {key: columns(row, PAYMENT_COLUMNS) for key, row in payments.items()}
    return found


def expected_lines(version: str, il_3_subscription_item: Any) -> dict[str, dict[str, Any]]:
    lines: dict[str, dict[str, Any]] = {
        "il_1": {
            "parent_type": "invoice_item_details",
            "invoice_item": "ii_one",
            "subscription_item": None,
            "subscription": None,
            "proration": False,
            "price": "price_1",
            "product": "prod_1",
            "quantity": 2,
            "amount": 1000,
        },
        "il_2": {
            "parent_type": "subscription_item_details",
            "invoice_item": None,
            "subscription_item": "si_1",
            "subscription": "sub_1",
            "proration": False,
            "price": "price_2",
            "product": "prod_2",
            "quantity": 3,
            "amount": 6000,
        },
        "il_3": {
            "parent_type": "invoice_item_details",
            "invoice_item": "ii_prorate",
            # Legacy proration lines name si_1; basil's name it only on the invoice item (§4.2), which a
            # handler may or may not join in.
            "subscription_item": il_3_subscription_item if basil(version) else "si_1",
            "subscription": "sub_1",
            "proration": True,
            "price": "price_2",
            "product": "prod_2",
            "quantity": 1,
            "amount": 968,
        },
    }
    # Legacy lines have no faithful unit amount (unit_amount_excluding_tax also leaves out discounts).
    unit = {"il_1": "500", "il_2": "2000", "il_3": "968"}
    for position, (line_id, values) in enumerate(lines.items()):
        values |= {
            "invoice": "in_1",
            "position": position,
            "quantity_decimal": str(values["quantity"]),  # derived where the shape has none
            "unit_amount_decimal": unit[line_id] if basil(version) else None,
        }
    return lines


def expected(version: str, found: dict[str, Any]) -> dict[str, Any]:
    old = legacy(version)
    pending = {"customer": "cus_V", "invoice": None, "deleted": False}  # the items' own snapshots
    wanted: dict[str, Any] = {
        "outcomes": dict.fromkeys(found["outcomes"], "applied|stale"),
        "api_versions": [version],
        "invoices": {
            "in_1": {
                "customer": "cus_V",
                "status": "paid",
                "finalized_at": FINALIZED_AT,
                "paid_at": PAID_AT,
                "subscription": "sub_1",
                "parent_type": "subscription_details",
                "quote": None,
                # Before basil the invoice names its payment; from basil on it is an invoice_payment.
                "charge": "ch_1" if old else None,
                "payment_intent": "pi_1" if old else None,
                "amount_due": TOTAL,
                "amount_paid": TOTAL,
                "amount_remaining": 0,
                "amount_overpaid": None if old else 0,  # basil's, no source before
                "subtotal": 7968,
                "total": TOTAL,
                "total_excluding_tax": 7968,
                "lines_incomplete": False,
            }
        },
        "lines": expected_lines(version, found["lines"].get("il_3", {}).get("subscription_item")),
        "items": {
            "ii_one": pending
            | {
                # Without invoiceitem.updated the change never reaches the item's own row (only its line).
                "description": NEW_DESCRIPTION if with_item_updated(version) else OLD_DESCRIPTION,
                "amount": 1000,
                "price": "price_1",
                "product": "prod_1",
                "parent_type": None,
                "subscription": None,
                "subscription_item": None,
                "proration": False,
                "quantity": 2,
                "quantity_decimal": "2",
                "unit_amount_decimal": "500",
            },
            "ii_prorate": pending
            | {
                "description": "Remaining time on 1 \u00d7 Team after 01 Feb 2026",
                "amount": 968,
                "price": "price_2",
                "product": "prod_2",
                "parent_type": "subscription_details",
                "subscription": "sub_1",
                "subscription_item": "si_1",
                "proration": True,
                "quantity": 1,
                "quantity_decimal": "1",
                "unit_amount_decimal": "968",
            },
        },
        # (invoice, pending) as readers see them: on in_1, whose lines name both.
        "items_for_a_reader": {"ii_one": ("in_1", False), "ii_prorate": ("in_1", False)},
        "alerts": {
            "alrt_1": {
                "alert_type": "usage_threshold",
                "status": "active",
                "title": "API calls above 1,000",
                "meter": "mtr_1",
                "gte": 1000,
                "recurrence": "one_time",
                "customer": "cus_V",
            }
        },
        "triggers": {
            "alrt_1": {"alert": "alrt_1", "customer": "cus_V", "value": 1004, "created": ALERT_AT - 1}
        },
    }
    if basil(version):
        wanted["payments"] = {
            "inpay_1": {
                "invoice": "in_1",
                "status": "paid",
                "payment_type": "payment_intent",
                "payment_id": "pi_1",
                "amount_paid": TOTAL,
                "paid_at": PAID_AT,
                "is_default": True,
            }
        }
    return wanted


def mismatches(found: Any, wanted: Any, path: str = "") -> list[str]:
    """Every leaf where ``found`` is not ``wanted``, as ``path: found instead of wanted``."""
    if isinstance(found, dict) and isinstance(wanted, dict):
        return [
            line
            for key in sorted(found.keys() | wanted.keys())
            for line in mismatches(found.get(key, "<absent>"), wanted.get(key, "<absent>"), f"{path} {key}")
        ]
    return [] if found == wanted else [f"{path.strip()}: {found!r} instead of {wanted!r}"]


@by_version
def test_each_file_reads_back_the_history(engine: Engine, version: str) -> None:
    results = replay(engine, version)
    found = read_back(engine, version, results)
    assert mismatches(found, expected(version, found)) == []


@by_version
def test_read_api(api: TestClient, engine: Engine, version: str) -> None:
    replay(engine, version)
    assert ids(get(api, "/v1/invoiceitems", customer="cus_V", pending="true")) == []
    assert sorted(ids(get(api, "/v1/invoiceitems", invoice="in_1"))) == ["ii_one", "ii_prorate"]
    assert sorted(ids(get(api, "/v1/invoiceitems", customer="cus_V", pending="false"))) == [
        "ii_one",
        "ii_prorate",
    ]
    # Served as Stripe would answer now: no event says so, but in_1's lines name it.
    item = get(api, "/v1/invoiceitems/ii_one")
    assert (item["id"], item["invoice"]) == ("ii_one", "in_1")
    assert ids(get(api, "/v1/invoices", subscription="sub_1")) == ["in_1"]
    assert ids(get(api, "/v1/invoices/in_1/lines")) == ["il_1", "il_2", "il_3"]
    assert ids(get(api, "/v1/billing/alerts", customer="cus_V")) == ["alrt_1"]
    assert ids(get(api, "/v1/billing/alerts", meter="mtr_1")) == ["alrt_1"]


# ---- the same history answers the same in every shape -----------------------------------------


class Exemption(NamedTuple):
    """A column (or a whole table, column None) not compared with the newest file for some files."""

    table: str
    column: str | None
    applies: Callable[[str], bool]
    reason: str
    row: str | None = None


def before(date: str) -> Callable[[str], bool]:
    return lambda version: not since(version, date)


# What the newest file has and an older one cannot give, each with why (the reference,
# stripe-api-versions.md): fields added later with no source before (§12.1), and what basil moved
# out of a shape. Everything else, derived fields included (§12.2), must read the same.
EXEMPTIONS = (
    Exemption("invoices", "amount_overpaid", legacy, "added by basil, no legacy source (§3.1)"),
    Exemption("invoices", "charge", legacy, "removed by basil: the payment is an invoice_payment (§3.1)"),
    Exemption("invoices", "payment_intent", legacy, "removed by basil, likewise (§3.1, §11.1)"),
    Exemption("invoice_payments", None, legacy, "invoice_payment objects and events are basil's (§6)"),
    Exemption(
        "invoice_line_items", "unit_amount_decimal", legacy, "basil's pricing; no faithful source (§12.1)"
    ),
    Exemption(
        "invoice_line_items", "pretax_credit_amounts", before("2024-10-28"), "2024-10-28.acacia (§12.1)"
    ),
    Exemption("invoice_line_items", "subtotal", before("2025-12-15"), "added at 2025-12-15.clover (§12.1)"),
    Exemption(
        "invoice_line_items",
        "subscription_item",
        legacy,
        "legacy proration lines name it; basil's only on the invoice item (§4.2)",
        row="il_3",
    ),
    Exemption("invoice_items", "net_amount", before("2025-09-30"), "added at 2025-09-30.clover (§5.1)"),
    Exemption(
        "invoice_items",
        "proration_details",
        before("2026-05-27"),
        "clover's, credited_items 2026-05-27 (§5.1)",
    ),
    # Not a shape: these files carry invoiceitem.updated (the type is gone since the end of 2023), so
    # ii_one was last written by it; in the others its description changed without an event.
    *(
        Exemption("invoice_items", column, with_item_updated, "written by invoiceitem.updated", row="ii_one")
        for column in ("description", "last_event_id", "last_event_created")
    ),
)
EVENT_ID_COLUMNS = ("last_event_id", "deleted_by_event_id", "event_id")


def normalized(engine: Engine, version: str) -> Dump:
    """The mirror of one file, without stripe_events (ids and api_version differ by design) and the
    payloads (each is the object in its own version), event ids replaced by what the event is about."""
    about = {json.loads(line)["id"]: label(line) for line in lines_of(version)}
    mirror = dump(engine)
    del mirror["stripe_events"]
    return {
        table: [
            {
                column: about.get(value, value) if column in EVENT_ID_COLUMNS else value
                for column, value in row.items()
                if column != "payload"
            }
            for row in found
        ]
        for table, found in mirror.items()
    }


def row_key(table: str, row: dict[str, Any]) -> str:
    key = SQLModel.metadata.tables[table].primary_key.columns
    return "/".join(str(row[column.name]) for column in key)


def differences(version: str, mirror: Dump, newest: Dump) -> list[str]:
    """Every (table, row, column) where ``mirror`` differs from ``newest`` without an exemption."""
    exempt = [exemption for exemption in EXEMPTIONS if exemption.applies(version)]
    found: list[str] = []
    for table, newest_rows in newest.items():
        if any(e.table == table and e.column is None for e in exempt):
            continue
        ours = {row_key(table, row): row for row in mirror[table]}
        theirs = {row_key(table, row): row for row in newest_rows}
        if sorted(ours) != sorted(theirs):
            found.append(f"{table}: rows {sorted(ours)} instead of {sorted(theirs)}")
            continue
        for key, row in theirs.items():
            for column, value in row.items():
                skipped = any(
                    e.table == table and e.column == column and e.row in (None, key) for e in exempt
                )
                if not skipped and ours[key][column] != value:
                    found.append(f"{table} {key} {column}: {ours[key][column]!r} instead of {value!r}")
    return found


def test_every_version_reads_back_the_same(engine: Engine) -> None:
    mirrors: dict[str, Dump] = {}
    for version in VERSIONS:
        reset(engine)
        replay(engine, version)
        mirrors[version] = normalized(engine, version)
    newest = mirrors[NEWEST]
    assert {table: len(found) for table, found in newest.items() if found} == {
        "billing_alert_triggers": 1,
        "billing_alerts": 1,
        "invoice_item_invoices": 2,
        "invoice_items": 2,
        "invoice_line_items": 3,
        "invoice_line_sets": 1,
        "invoice_payments": 1,
        "invoices": 1,
    }
    found = {version: differences(version, mirrors[version], newest) for version in VERSIONS}
    assert {version: listed for version, listed in found.items() if listed} == {}


# ---- one event in two shapes; invoiceitem.updated ---------------------------------------------


@pytest.mark.parametrize(("first", "second"), [("2024-06-20", NEWEST), (NEWEST, "2024-06-20")])
def test_one_event_id_in_two_shapes_is_a_duplicate(engine: Engine, first: str, second: str) -> None:
    """Two endpoints on two versions get the same event rendered twice under one id: the rendering
    stored first stays, the second is a duplicate and changes nothing."""
    shared_id = json.loads(event_line("2024-06-20", "invoice.paid"))["id"]

    def paid_as_shared(version: str, line: str) -> str:
        own_id = json.loads(event_line(version, "invoice.paid"))["id"]
        return line.replace(own_id, shared_id) if line == event_line(version, "invoice.paid") else line

    ingest_lines(engine, [paid_as_shared(first, line) for line in lines_of(first)])
    before_second = dump(engine)
    [result] = ingest_lines(engine, [paid_as_shared(second, event_line(second, "invoice.paid"))])
    assert (result.event_id, result.duplicate) == (shared_id, True)
    assert result.outcome in (Outcome.APPLIED, Outcome.STALE)
    assert dump(engine) == before_second
    stored = one(engine, "stripe_events", id=shared_id)
    assert (stored["api_version"], stored["attempts"]) == (first, 1)


@pytest.mark.parametrize("version", [v for v in VERSIONS if with_item_updated(v)])
def test_invoiceitem_updated_is_a_newer_snapshot(engine: Engine, version: str) -> None:
    """A legacy invoiceitem.updated is one more snapshot of the item: the newer one wins, whichever
    arrives last."""
    created = next(line for line in lines_of(version) if label(line) == "invoiceitem.created ii_one")
    updated = event_line(version, "invoiceitem.updated")
    assert json.loads(updated)["created"] > json.loads(created)["created"]
    found = {}
    for order, delivered in {
        "created first": [created, updated],
        "updated first": [updated, created],
    }.items():
        reset(engine)
        outcomes = [result.outcome.value for result in ingest_lines(engine, delivered)]
        item = one(engine, "invoice_items", id="ii_one")
        found[order] = (outcomes, item["description"], item["last_event_id"], json.loads(item["payload"]))
    updated_event = json.loads(updated)
    assert found == {
        "created first": (
            ["applied", "applied"],
            NEW_DESCRIPTION,
            updated_event["id"],
            updated_event["data"]["object"],
        ),
        "updated first": (
            ["applied", "stale"],
            NEW_DESCRIPTION,
            updated_event["id"],
            updated_event["data"]["object"],
        ),
    }
