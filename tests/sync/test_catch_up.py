"""``billing-mirror sync events``: catching up from the Events API of the Stripe-compatible test server
after the receiver was down, on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from app.db.engine import make_engine
from app.ingest.store import EventStore
from app.mirror.envelope import parse_event
from app.testing.dump import dump, rows
from tests.stripe_server import objects
from tests.stripe_server.runner import RunningServer
from tests.stripe_server.store import PLATFORM_ACCOUNT
from tests.support import (
    API_KEY,
    T0,
    LiveServer,
    copy_sqlite,
    encode,
    item,
    make_event,
    one,
    run_cli,
    sync_args,
)

DAY = 86_400


def history(
    server: RunningServer, start: int, count: int, *, account: str = PLATFORM_ACCOUNT
) -> list[dict[str, Any]]:
    """``count`` item events, several in a second, an invoice event, and one event of a type the mirror
    does not keep (not returned: it must never be asked for)."""
    store = server.server.store

    def add(event_type: str, obj: dict[str, Any], created: int) -> dict[str, Any]:
        event = objects.event(event_type, obj, created=created)
        if account != PLATFORM_ACCOUNT:
            event["account"] = account
        return store.add_event(event, account=account)

    made = [
        add("invoiceitem.created", objects.invoice_item(date=start + n // 3), start + n // 3)
        for n in range(count)
    ]
    made.append(add("invoice.created", objects.invoice(created=start + count, status="draft"), start + count))
    add("customer.updated", {"id": f"cus_{start}", "object": "customer"}, start)
    return made


def receive(engine: Engine, *events: dict[str, Any]) -> None:
    """As if delivered by webhook."""
    for result in EventStore(engine).ingest([parse_event(encode(event)) for event in events]):
        assert not isinstance(result, Exception) and result.error is None, result


def catch_up(server: RunningServer, db_url: str, *extra: str) -> Any:
    return run_cli("sync", "events", *sync_args(server.url, db_url, *extra))


def test_events_missed_while_down_are_applied_once(
    stripe_api: RunningServer, db_url: str, engine: Engine, tmp_path: Path, sqlite_template: Path
) -> None:
    events = history(stripe_api, T0, 30)
    receive(engine, *events[:6])  # delivered before the receiver went down
    stripe_api.server.clock.set(T0 + 3 * DAY)

    result = catch_up(stripe_api, db_url)

    assert result.exit_code == 0, result.output
    stored = {row["id"]: row for row in rows(engine, "stripe_events")}
    assert set(stored) == {event["id"] for event in events}  # the unmirrored type was never asked for
    assert {stored[event["id"]]["source"] for event in events[6:]} == {"events_api"}
    assert {stored[event["id"]]["source"] for event in events[:6]} == {"webhook"}
    assert "25 applied" in result.output and "already stored" in result.output
    # The same mirror as if every event had arrived by webhook.
    reference_url = copy_sqlite(sqlite_template, tmp_path / "reference.db")
    reference = make_engine(reference_url)
    try:
        receive(reference, *events)
        mine, theirs = dump(engine), dump(reference)
        for table in ("invoice_items", "invoices"):
            assert mine[table] == theirs[table]
    finally:
        reference.dispose()
    # Two requests per window: invoice.* by prefix, the other mirrored types by name (at most 20).
    requests = [entry.params for entry in stripe_api.server.log.matching("/v1/events") if entry.params]
    listed = [params for params in requests if "created" in params]
    assert {params.get("type") for params in listed} == {"invoice.*", None}
    named = next(params["types"] for params in listed if "types" in params)
    assert "invoiceitem.created" in named and "invoice_payment.paid" in named and len(named) <= 20
    # It started from the newest stored event minus the overlap.
    newest = max(event["created"] for event in events[:6])
    assert min(int(params["created"]["gte"]) for params in listed) == newest - 300


def test_the_next_catch_up_starts_at_the_watermark(
    stripe_api: RunningServer, db_url: str, engine: Engine
) -> None:
    history(stripe_api, T0, 6)
    stripe_api.server.clock.set(T0 + DAY)
    assert catch_up(stripe_api, db_url, "--since", str(T0)).exit_code == 0
    assert one(engine, "sync_state", resource="events")["watermark"] == T0 + DAY + 1
    stripe_api.server.log.clear()
    later = history(stripe_api, T0 + DAY + 10, 3)
    stripe_api.server.clock.set(T0 + DAY + 60)

    second = catch_up(stripe_api, db_url)

    assert second.exit_code == 0, second.output
    listed = [
        e.params for e in stripe_api.server.log.matching("/v1/events") if e.params and "created" in e.params
    ]
    assert min(int(params["created"]["gte"]) for params in listed) == T0 + DAY + 1 - 300
    assert {event["id"] for event in later} <= {row["id"] for row in rows(engine, "stripe_events")}


def test_an_event_listed_late_is_caught_by_the_overlap(
    stripe_api: RunningServer, db_url: str, engine: Engine
) -> None:
    """Stripe lists an event some seconds after its created: the next catch-up reads that far back."""
    store = stripe_api.server.store
    item = objects.invoice_item(date=T0)
    late = store.add_event(objects.event("invoiceitem.created", item, created=T0 + 100), visible_after=30)
    stripe_api.server.clock.set(T0 + 110)
    assert catch_up(stripe_api, db_url, "--since", str(T0)).exit_code == 0
    assert late["id"] not in {row["id"] for row in rows(engine, "stripe_events")}
    stripe_api.server.clock.set(T0 + 200)

    assert catch_up(stripe_api, db_url).exit_code == 0

    assert one(engine, "stripe_events", id=late["id"])["source"] == "events_api"
    assert one(engine, "invoice_items", id=item["id"])["last_event_id"] == late["id"]


def test_a_gap_older_than_the_events_api_says_a_full_sync_is_needed(
    stripe_api: RunningServer, db_url: str, engine: Engine
) -> None:
    old = history(stripe_api, T0, 3)
    receive(engine, old[0])
    recent = history(stripe_api, T0 + 35 * DAY, 3)
    stripe_api.server.clock.set(T0 + 40 * DAY)

    result = catch_up(stripe_api, db_url)

    assert result.exit_code == 3
    assert "30 days" in result.output and "billing-mirror sync --full" in result.output
    # What Stripe still has is applied all the same.
    assert {event["id"] for event in recent} <= {row["id"] for row in rows(engine, "stripe_events")}


def test_an_empty_mirror_is_told_to_sync(stripe_api: RunningServer, db_url: str) -> None:
    stripe_api.server.clock.set(T0)
    result = catch_up(stripe_api, db_url)
    assert result.exit_code == 3 and "holds no event yet" in result.output


def test_a_connect_account_catches_up_its_own_events(
    stripe_api: RunningServer, db_url: str, engine: Engine
) -> None:
    stripe_api.server.store.add_account("acct_connected")
    theirs = history(stripe_api, T0, 3, account="acct_connected")
    history(stripe_api, T0, 3)
    stripe_api.server.clock.set(T0 + DAY)

    result = catch_up(stripe_api, db_url, "--stripe-account", "acct_connected", "--since", str(T0))

    assert result.exit_code == 0, result.output
    stored = rows(engine, "stripe_events")
    assert {row["id"] for row in stored} == {event["id"] for event in theirs}
    assert {row["account"] for row in stored} == {"acct_connected"}
    assert {entry.account for entry in stripe_api.server.log.entries} == {"acct_connected"}


def test_a_refusal_from_stripe_is_said_plainly(stripe_api: RunningServer, db_url: str) -> None:
    stripe_api.server.clock.set(T0)
    result = catch_up(stripe_api, db_url, "--stripe-account", "acct_unknown")
    assert result.exit_code == 1
    assert "Stripe's API answered (403): PermissionError" in result.output
    assert "does not have access to account 'acct_unknown'" in result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_one_mirror_catches_up_from_another(
    db_url: str, engine: Engine, live_server: Callable[..., LiveServer], tmp_path: Path, sqlite_template: Path
) -> None:
    """Mirror A's read API serves GET /v1/events as Stripe does: mirror B catches up from it."""
    recent = int(time.time()) - DAY
    events = [
        make_event("invoiceitem.created", item(f"ii_copy_{n}", recent + n), created=recent + n)
        for n in range(25)
    ]
    receive(engine, *events)
    source = live_server(BILLING_MIRROR_API_KEYS=API_KEY)
    copy_url = copy_sqlite(sqlite_template, tmp_path / "copy.db")

    result = run_cli(
        "sync",
        "events",
        "--api-key",
        API_KEY,
        "--api-base",
        source.url,
        "--database-url",
        copy_url,
        "--since",
        str(recent - 60),
        "--no-migrate",
    )

    assert result.exit_code == 0, result.output
    copy = make_engine(copy_url)
    try:
        assert {row["id"] for row in rows(copy, "stripe_events")} == {event["id"] for event in events}
        assert dump(copy)["invoice_items"] == dump(engine)["invoice_items"]
    finally:
        copy.dispose()
