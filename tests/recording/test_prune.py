"""``billing-mirror events prune``: what it deletes, what it keeps, and what a pruned log still rebuilds,
on both databases, with the real application storing the events at a frozen clock."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from freezegun import freeze_time
from sqlalchemy import Engine
from starlette.testclient import TestClient

from app.db.engine import make_engine
from app.main import create_app
from app.recording.prune import mirrored_writer_columns, prune
from app.settings import Settings
from app.testing.dump import dump
from tests.support import (
    FIXTURES,
    copy_sqlite,
    deliver,
    item,
    make_event,
    payment,
    payment_event,
    rows,
    run_cli,
    signed_headers,
    stored,
)

OLD = "2026-01-01 12:00:00"  # when the old events are received
LATER = "2026-03-01 12:00:00"  # 59 days later: within 90 days of OLD
NOW = "2026-04-11 12:00:00"  # 100 days after OLD
TEMPLATES = FIXTURES / "billing" / "invoice_rendering_templates.list.json"


def receive_history(client: TestClient, db_url: str) -> None:
    """Old events (kept or not), one a newer delivery supersedes, a failed one, a stale one, a
    snapshot of two templates (no object id), an unknown type, and dead letters old and recent."""
    with freeze_time(OLD):
        for event in (
            make_event("invoiceitem.created", item("ii_1", 100), event_id="evt_ii1_old", created=101),
            make_event(
                "invoiceitem.created", item("ii_1", 100, amount=5), event_id="evt_ii1_new", created=102
            ),
            make_event("invoiceitem.created", item("ii_2", 100), event_id="evt_ii2_new", created=202),
            make_event("invoiceitem.created", item("ii_2", 100), event_id="evt_ii2_stale", created=201),
            make_event("invoiceitem.created", item("ii_3", 100), event_id="evt_ii3_old", created=301),
            make_event("invoiceitem.created", {**item("ii_bad", 100), "date": "abc"}, event_id="evt_bad"),
            make_event("plan.created", {"id": "plan_1", "object": "plan"}, event_id="evt_plan"),
            {**payment_event(payment("inpay_1", 400)), "id": "evt_pay"},
        ):
            assert deliver(client, event).status_code == 200
        body = b"not json at all"
        headers = signed_headers(body, 1767268800)
        assert client.post("/webhooks/stripe", content=body, headers=headers).json()["outcome"] == "refused"
        assert run_cli("backfill", "templates", str(TEMPLATES), "--database-url", db_url).exit_code == 0
    with freeze_time(LATER):
        newer = make_event(
            "invoiceitem.created", item("ii_3", 100, amount=7), event_id="evt_ii3_new", created=302
        )
        assert deliver(client, newer).status_code == 200
        body = b"[1, 2"
        headers = signed_headers(body, 1772366400)
        assert client.post("/webhooks/stripe", content=body, headers=headers).json()["outcome"] == "refused"


def test_prune_deletes_only_what_nothing_keeps(
    db_url: str, engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path, sqlite_template: Path
) -> None:
    with TestClient(create_app(make_settings())) as client:
        receive_history(client, db_url)
    before = stored(engine)
    [snapshot] = [event_id for event_id in before if event_id.startswith("snap_")]
    assert before["evt_bad"][0] == "failed" and before["evt_ii2_stale"][0] == "stale"
    mirror_before = dump(engine)

    with freeze_time(NOW):
        dry = run_cli(
            "events", "prune", "--older-than", "90d", "--dry-run", "--json", "--database-url", db_url
        )
        assert dry.exit_code == 0, dry.output
        assert stored(engine) == before  # a dry run deletes nothing
        result = run_cli("events", "prune", "--older-than", "90d", "--json", "--database-url", db_url)
    assert result.exit_code == 0, result.output
    counts = json.loads(result.output)
    expected = {
        "deleted": 3,  # evt_ii1_old, evt_ii2_stale and evt_ii3_old: newer events of their objects exist
        "kept_failed": 1,  # evt_bad
        "kept_newest": 4,  # evt_ii1_new, evt_ii2_new, evt_plan, evt_pay
        "kept_mirrored": 1,  # the templates' snapshot: no object id, but the version of both rows
        "kept_recent": 1,  # evt_ii3_new
        "dead_letters_deleted": 1,
        "dead_letters_kept": 1,
    }
    assert {key: counts[key] for key in expected} == expected
    assert json.loads(dry.output) | {"dry_run": False} == counts
    assert counts["received_before"].startswith("2026-01-11T12:00:00")
    assert sorted(stored(engine)) == sorted(
        ["evt_ii1_new", "evt_ii2_new", "evt_bad", "evt_plan", "evt_pay", snapshot, "evt_ii3_new"]
    )
    assert [row["body"] for row in rows(engine, "dead_letters")] == [b"[1, 2"]
    # The mirror itself is untouched.
    assert dump(engine) | {"stripe_events": [], "dead_letters": []} == mirror_before | {
        "stripe_events": [],
        "dead_letters": [],
    }

    # What is left rebuilds the current mirror: export it and replay it into an empty database.
    exported = run_cli("events", "export", "--database-url", db_url)
    recording = tmp_path / "pruned.jsonl"
    recording.write_text(exported.stdout)
    rebuilt_url = copy_sqlite(sqlite_template, tmp_path / "rebuilt.db")
    replayed = run_cli("replay", str(recording), "--direct", "--no-migrate", "--database-url", rebuilt_url)
    assert replayed.exit_code == 1, replayed.output  # evt_bad fails again, as it should
    rebuilt = make_engine(rebuilt_url)
    try:
        mirrored = {name for name, _ in mirrored_writer_columns()}
        assert "invoice_rendering_templates" in mirrored and "invoice_items" in mirrored
        for table in mirrored:
            assert dump(rebuilt)[table] == dump(engine)[table], table
        assert {row["id"]: row["amount"] for row in rows(rebuilt, "invoice_items")} == {
            "ii_1": 5,
            "ii_2": 1000,
            "ii_3": 7,
        }
    finally:
        rebuilt.dispose()

    # Pruning again finds nothing more to delete.
    with freeze_time(NOW):
        again = run_cli("events", "prune", "--older-than", "90d", "--json", "--database-url", db_url)
    assert json.loads(again.output)["deleted"] == 0


def test_prune_works_in_batches_and_reports_in_words(
    db_url: str, engine: Engine, make_settings: Callable[..., Settings]
) -> None:
    with TestClient(create_app(make_settings())) as client, freeze_time(OLD):
        for number in range(7):  # seven versions of one item: the six older ones go
            event = make_event(
                "invoiceitem.created",
                item("ii_many", 100, amount=number),
                event_id=f"evt_{number}",
                created=500 + number,
            )
            assert deliver(client, event).status_code == 200
    with freeze_time(NOW):
        batches: list[int] = []
        report = prune(
            engine,
            datetime(2026, 1, 11, tzinfo=UTC),
            batch_size=2,
            on_batch=lambda r: batches.append(r.deleted),
        )
    assert report.deleted == 6 and report.kept_newest == 1
    assert batches == [2, 4, 6, 6]  # one short transaction per page of two
    assert sorted(stored(engine)) == ["evt_6"]
    with freeze_time(NOW):
        words = run_cli("events", "prune", "--older-than", "90d", "--database-url", db_url)
    assert words.exit_code == 0, words.output
    assert "deleted 0 events and 0 dead letters" in words.output
    assert "kept 1 events: 0 failed, 1 the newest of their object, 0 still the version of a mirrored row" in (
        words.output
    )
    bad = run_cli("events", "prune", "--older-than", "soon", "--database-url", db_url)
    assert bad.exit_code == 2 and "not a duration" in bad.output


def test_prune_leaves_no_temporary_table_behind(engine: Engine) -> None:
    for _ in range(2):  # the same pooled connection may serve both runs
        assert prune(engine, datetime(2026, 1, 1, tzinfo=UTC)).deleted == 0
