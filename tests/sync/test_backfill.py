"""``billing-mirror sync``: a backfill from the Stripe-compatible test server (real HTTP, stripe-python),
on SQLite and PostgreSQL: every object once as Stripe sent it, lines past the first page, windows in
parallel, checkpoints, resuming, and the rate limit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import stamina
from sqlalchemy import Engine

from app.db.engine import make_engine
from app.testing.dump import dump, rows
from tests.stripe_server import objects
from tests.stripe_server.faults import Mutate, api_error, rate_limit_error
from tests.stripe_server.runner import RunningServer
from tests.stripe_server.store import (
    ALERTS,
    INVOICE_ITEMS,
    INVOICE_PAYMENTS,
    INVOICES,
    METERS,
    TEMPLATES,
    Store,
)
from tests.support import T0, copy_sqlite, one, payloads, run_cli, sync_args

NOW = T0 + 86_400 * 40


def populate(store: Store, *, items: int = 450, invoices: int = 60) -> dict[str, list[dict[str, Any]]]:
    """An account with objects of every resource: items 7 to a second (ties in a shuffled order),
    invoices of which every tenth has 23 lines (Stripe embeds 10), paid ones with their payments."""
    store.shuffle_ties(11)
    made: dict[str, list[dict[str, Any]]] = {name: [] for name in (INVOICE_ITEMS, INVOICES, INVOICE_PAYMENTS)}
    for number in range(items):
        made[INVOICE_ITEMS].append(store.put(INVOICE_ITEMS, objects.invoice_item(date=T0 + number // 7)))
    for number in range(invoices):
        status = "paid" if number % 3 == 0 else "open"
        invoice = objects.invoice(created=T0 + 5 * number, lines=23 if number % 10 == 0 else 2, status=status)
        made[INVOICES].append(invoice)
        store.put(INVOICES, invoice)
        if status == "paid":
            for offset in range(2):
                payment = objects.invoice_payment(created=T0 + 5 * number + offset, invoice=invoice["id"])
                made[INVOICE_PAYMENTS].append(store.put(INVOICE_PAYMENTS, payment))
    meters = [store.put(METERS, objects.meter(created=T0 + number)) for number in range(3)]
    made[ALERTS] = [
        store.put(ALERTS, objects.alert(meter_id=meters[0]["id"]), created=T0 + n) for n in range(2)
    ]
    made[TEMPLATES] = [store.put(TEMPLATES, objects.rendering_template(created=T0 + n)) for n in range(2)]
    made[METERS] = meters
    return made


def assert_mirrors(engine: Engine, made: dict[str, list[dict[str, Any]]]) -> None:
    """Every object of the account is in the mirror, as Stripe sent it; invoices with every line."""
    assert payloads(engine, "invoice_items") == {item["id"]: item for item in made[INVOICE_ITEMS]}
    assert payloads(engine, "invoice_payments") == {pay["id"]: pay for pay in made[INVOICE_PAYMENTS]}
    assert payloads(engine, "billing_meters") == {meter["id"]: meter for meter in made[METERS]}
    assert payloads(engine, "billing_alerts") == {alert["id"]: alert for alert in made[ALERTS]}
    assert payloads(engine, "invoice_rendering_templates") == {t["id"]: t for t in made[TEMPLATES]}
    mirrored = payloads(engine, "invoices")
    assert set(mirrored) == {invoice["id"] for invoice in made[INVOICES]}
    lines = rows(engine, "invoice_line_items")
    for invoice in made[INVOICES]:
        stored = mirrored[invoice["id"]]
        assert {k: v for k, v in stored.items() if k != "lines"} == {
            k: v for k, v in invoice.items() if k != "lines"
        }
        assert stored["lines"]["has_more"] is False
        expected = [line["id"] for line in invoice["lines"]["data"]]
        mine = sorted(
            (row for row in lines if row["invoice"] == invoice["id"]), key=lambda row: row["position"]
        )
        assert [row["id"] for row in mine] == expected
        assert one(engine, "invoices", id=invoice["id"])["lines_incomplete"] is False


def test_sync_reads_every_object_once_as_stripe_sent_it(
    stripe_api: RunningServer, db_url: str, engine: Engine
) -> None:
    made = populate(stripe_api.server.store)
    stripe_api.server.clock.set(NOW)

    result = run_cli("sync", *sync_args(stripe_api.url, db_url, "--threads", "6"))

    assert result.exit_code == 0, result.output
    assert_mirrors(engine, made)
    assert "invoiceitems: 4" in result.output and "invoices: " in result.output
    # Pages are events in the log, dated by Stripe's clock, with the source of their fetch.
    snapshots = [row for row in rows(engine, "stripe_events") if row["type"].startswith("snapshot.")]
    assert snapshots and {row["source"] for row in snapshots} == {"sync"}
    assert {row["created"] for row in snapshots} == {NOW}
    state = {row["resource"]: row for row in rows(engine, "sync_state")}
    assert {name: state[name]["finished_at"] for name in state} == dict.fromkeys(state, NOW)
    assert state["invoiceitems"]["objects"] >= 450
    assert all(window["done"] for window in rows(engine, "sync_windows"))
    # Lines past the first page came from the lines endpoint, 100 at a time, for those invoices only.
    lines_requests = stripe_api.server.log.matching(r"/v1/invoices/[^/]+/lines")
    assert len(lines_requests) == 6 and {
        entry.params["limit"] for entry in lines_requests if entry.params
    } == {"100"}
    # Items were read in parallel windows, and not much more than once.
    item_requests = stripe_api.server.log.matching("/v1/invoiceitems")
    assert (
        len(
            {
                json.dumps(entry.params.get("created"), sort_keys=True)
                for entry in item_requests
                if entry.params
            }
        )
        > 1
    )
    assert state["invoiceitems"]["objects"] <= 450 + 100 * len(item_requests) // 4


def test_a_finished_sync_reads_nothing_again_until_full(
    stripe_api: RunningServer, db_url: str, engine: Engine
) -> None:
    made = populate(stripe_api.server.store, items=120, invoices=4)
    stripe_api.server.clock.set(NOW)
    assert run_cli("sync", *sync_args(stripe_api.url, db_url)).exit_code == 0
    requests_before = len(stripe_api.server.log.entries)

    again = run_cli("sync", *sync_args(stripe_api.url, db_url, "invoiceitems"))
    assert again.exit_code == 0
    assert "invoiceitems: already synced" in again.output
    assert len(stripe_api.server.log.entries) == requests_before

    changed = dict(made[INVOICE_ITEMS][0], description="Changed while nobody listened")
    stripe_api.server.store.put(INVOICE_ITEMS, changed)
    stripe_api.server.clock.set(NOW + 60)
    full = run_cli("sync", *sync_args(stripe_api.url, db_url, "items", "--full"))
    assert full.exit_code == 0, full.output
    assert payloads(engine, "invoice_items")[changed["id"]]["description"] == "Changed while nobody listened"


def test_a_stopped_sync_continues_without_reading_finished_windows_again(
    stripe_api: RunningServer, db_url: str, engine: Engine
) -> None:
    made = populate(stripe_api.server.store, items=900, invoices=0)
    stripe_api.server.clock.set(NOW)
    # The 12th request to the items list fails for good (Stripe says not to retry it).
    stripe_api.server.faults.add(api_error(should_retry=False), path="/v1/invoiceitems", nth=12)

    stopped = run_cli("sync", *sync_args(stripe_api.url, db_url, "items", "--threads", "3"))

    assert stopped.exit_code != 0 and "Run it again to continue" in stopped.output
    windows = rows(engine, "sync_windows", resource="invoiceitems")
    finished = {window["span"] for window in windows if window["done"]}
    assert finished and any(not window["done"] for window in windows)
    first_run = len(stripe_api.server.log.entries)

    resumed = run_cli("sync", *sync_args(stripe_api.url, db_url, "items", "--threads", "3"))

    assert resumed.exit_code == 0, resumed.output
    assert payloads(engine, "invoice_items") == {item["id"]: item for item in made[INVOICE_ITEMS]}
    for entry in stripe_api.server.log.entries[first_run:]:
        created = (entry.params or {}).get("created", {})
        span = f"{created.get('gte', '')}..{created.get('lt', '')}"
        assert span not in finished, f"finished window {span} was read again"


def test_rate_limits_and_transient_errors_are_retried(
    stripe_api: RunningServer, db_url: str, engine: Engine
) -> None:
    made = populate(stripe_api.server.store, items=300, invoices=12)
    stripe_api.server.clock.set(NOW)
    faults = stripe_api.server.faults
    faults.add(rate_limit_error("endpoint-rate"), path="/v1/invoiceitems", nth=(2, 3))
    faults.add(api_error(should_retry=True), path="/v1/invoices", nth=1)
    faults.add(rate_limit_error("global-rate"), path=r"/v1/invoices/[^/]+/lines", nth=1)

    with stamina.set_testing(True, attempts=4):
        result = run_cli("sync", *sync_args(stripe_api.url, db_url, "invoices", "items"))

    assert result.exit_code == 0, result.output
    assert payloads(engine, "invoice_items") == {item["id"]: item for item in made[INVOICE_ITEMS]}
    assert set(payloads(engine, "invoices")) == {invoice["id"] for invoice in made[INVOICES]}
    statuses = [entry.status for entry in stripe_api.server.log.entries]
    assert statuses.count(429) == 3 and statuses.count(500) == 1


def test_objects_that_change_between_pages_are_all_read(
    stripe_api: RunningServer, db_url: str, engine: Engine
) -> None:
    """While a sync pages, new objects are created (they land before the first page) and one is
    deleted (it vanishes from the list): every object present throughout is read."""
    made = populate(stripe_api.server.store, items=500, invoices=0)
    stripe_api.server.clock.set(NOW)
    deleted = made[INVOICE_ITEMS][10]["id"]

    def change(store: Store) -> None:
        store.put(INVOICE_ITEMS, objects.invoice_item(date=NOW - 1))
        if store.account().collections[INVOICE_ITEMS].get(deleted) is not None:
            store.delete(INVOICE_ITEMS, deleted)

    stripe_api.server.faults.add(Mutate(change), path="/v1/invoiceitems", nth=(2, 3))
    result = run_cli("sync", *sync_args(stripe_api.url, db_url, "items", "--threads", "1"))

    assert result.exit_code == 0, result.output
    mirrored = payloads(engine, "invoice_items")
    assert {item["id"] for item in made[INVOICE_ITEMS]} - {deleted} <= set(mirrored)


def test_a_connect_account_is_synced_on_its_own(
    stripe_api: RunningServer, db_url: str, engine: Engine
) -> None:
    store = stripe_api.server.store
    store.add_account("acct_connected")
    theirs = store.put(INVOICE_ITEMS, objects.invoice_item(date=T0), account="acct_connected")
    store.put(INVOICE_ITEMS, objects.invoice_item(date=T0))
    stripe_api.server.clock.set(NOW)

    result = run_cli(
        "sync", *sync_args(stripe_api.url, db_url, "items", "--stripe-account", "acct_connected")
    )

    assert result.exit_code == 0, result.output
    assert set(payloads(engine, "invoice_items")) == {theirs["id"]}
    assert {row["account"] for row in rows(engine, "sync_state")} == {"acct_connected"}
    snapshot = next(row for row in rows(engine, "stripe_events") if row["type"] == "snapshot.invoiceitem")
    assert snapshot["account"] == "acct_connected"


def test_the_limiter_keeps_the_sync_under_max_rps(
    stripe_api: RunningServer, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pyrate_limiter import InMemoryBucket

    populate(stripe_api.server.store, items=2000, invoices=0)
    stripe_api.server.clock.set(NOW)
    args = sync_args(stripe_api.url, db_url, "items", "--threads", "8")
    args[args.index("--max-rps") + 1] = "20"
    args[args.index("--max-endpoint-rps") + 1] = "20"
    granted: list[int] = []  # the limiter's own times (ms) of the slots it gave, for all requests
    put = InMemoryBucket.put

    def recorded_put(bucket: InMemoryBucket, item: Any) -> bool:
        admitted = put(bucket, item)
        if admitted and item.name == "all":
            granted.append(item.timestamp)
        return admitted

    monkeypatch.setattr(InMemoryBucket, "put", recorded_put)

    assert run_cli("sync", *args).exit_code == 0

    def fastest_twenty_one(times: list[float]) -> float:
        """The shortest span holding 21 requests: at least a second when at most 20 go in any second."""
        times = sorted(times)
        return min(times[index + 20] - times[index] for index in range(len(times) - 20))

    arrivals = [entry.monotonic for entry in stripe_api.server.log.matching("/v1/invoiceitems")]
    assert len(arrivals) == len(granted) > 21
    assert fastest_twenty_one(granted) >= 1000, "the limiter gave more than 20 slots in a second"
    # The test server shares this process (and its GIL) with 8 sync threads and their writes, so a
    # request may reach it a scheduling slice after its slot; 10 % is far below a missing limiter's 8x.
    assert fastest_twenty_one(arrivals) >= 0.9, "more than 20 requests reached the server in 0.9 s"


@pytest.mark.parametrize("resource", ["nothing", "events,items"])
def test_unknown_or_mixed_resources_are_refused(
    stripe_api: RunningServer, db_url: str, resource: str
) -> None:
    from click.testing import CliRunner

    from app.cli.main import cli

    result = CliRunner().invoke(cli, ["sync", *resource.split(","), *sync_args(stripe_api.url, db_url)])
    assert result.exit_code == 2
    assert "Unknown resource" in result.output or "sync of its own" in result.output


def test_the_exported_log_rebuilds_a_synced_mirror(
    stripe_api: RunningServer, db_url: str, engine: Engine, tmp_path: Path, sqlite_template: Path
) -> None:
    """Fetched pages are events in the log: export, then replay into an empty database, gives the
    same mirror (lines past the first page included)."""
    populate(stripe_api.server.store, items=150, invoices=12)
    stripe_api.server.clock.set(NOW)
    assert run_cli("sync", *sync_args(stripe_api.url, db_url)).exit_code == 0
    exported = run_cli("events", "export", "--database-url", db_url)
    recording = tmp_path / "log.jsonl"
    recording.write_text(exported.stdout)

    rebuilt_url = copy_sqlite(sqlite_template, tmp_path / "rebuilt.db")
    replayed = run_cli("replay", str(recording), "--direct", "--no-migrate", "--database-url", rebuilt_url)

    assert replayed.exit_code == 0, replayed.output
    rebuilt = make_engine(rebuilt_url)
    try:
        assert dump(rebuilt) == dump(engine)
        assert len(rows(rebuilt, "invoice_line_items")) == 2 * 23 + 10 * 2  # every line of 12 invoices
    finally:
        rebuilt.dispose()


def test_the_progress_display_shows_objects_rates_and_an_estimate(
    stripe_api: RunningServer, db_url: str
) -> None:
    from rich.console import Console

    from app.cli.sync import SyncDisplay
    from app.sync.backfill import Progress
    from app.sync.resources import INVOICE_ITEMS as ITEMS_RESOURCE
    from app.sync.resources import METERS as METERS_RESOURCE

    class Reader:
        requests = 120

    display = SyncDisplay(Reader(), enabled=False)
    items = Progress(ITEMS_RESOURCE, objects=5000, pages=50, windows_open=3, windows_done=9)
    items.covered, items.remaining = 1000, 1000  # half the range read: as much again to go
    meters = Progress(METERS_RESOURCE, objects=4, pages=1, finished=True)
    console = Console(record=True, width=140)
    console.print(display._table([items, meters]))
    text = console.export_text()
    assert "invoiceitems" in text and "5,000" in text and "9/3" in text
    assert "requests" in text and "meters" in text and "done" in text
    estimate = items.estimate_seconds(elapsed=10.0)
    assert estimate is not None and 9.0 <= estimate <= 11.0  # 5,000 more at 500/s


def test_invoices_alone_come_with_their_payments(
    stripe_api: RunningServer, db_url: str, engine: Engine
) -> None:
    """Without invoice_payments in the sync, invoices are read with expand[]=data.payments, and every
    payment of an invoice with more than the embedded ones is read from the payments list."""
    store = stripe_api.server.store
    invoice = store.put(INVOICES, objects.invoice(created=T0, status="paid"))
    payments = [
        store.put(
            INVOICE_PAYMENTS, objects.invoice_payment(created=T0 + n, invoice=invoice["id"], status="open")
        )
        for n in range(12)
    ]
    stripe_api.server.clock.set(NOW)

    result = run_cli("sync", "invoices", *sync_args(stripe_api.url, db_url))

    assert result.exit_code == 0, result.output
    assert payloads(engine, "invoice_payments") == {payment["id"]: payment for payment in payments}
    listed = stripe_api.server.log.matching("/v1/invoices")
    assert all(entry.params and entry.params.get("expand") == ["data.payments"] for entry in listed)
    by_invoice = stripe_api.server.log.matching("/v1/invoice_payments")
    assert by_invoice and all(
        entry.params and entry.params["invoice"] == invoice["id"] for entry in by_invoice
    )
