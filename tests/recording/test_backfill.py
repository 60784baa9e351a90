"""`billing-mirror backfill templates|lines`: Stripe list JSON the user fetched, into the mirror."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from freezegun import freeze_time
from sqlalchemy import Engine

from app.cli.main import cli
from app.db.engine import make_engine
from app.recording.backfill import BackfillError, backfill_templates, parse_list
from app.testing.dump import dump, rows
from tests.support import (
    INVOICE_G,
    T0,
    copy_sqlite,
    fixture_path,
    ingest_each,
    make_event,
    one,
    recorded,
    snapshot_of,
)

TEMPLATES = fixture_path("invoice_rendering_templates.list.json")
LINES_G = fixture_path("invoice_lines.in_G.json")


def run(db_url: str, *args: str) -> Any:
    result = CliRunner().invoke(cli, ["backfill", *args, "--database-url", db_url])
    return result


def write(tmp_path: Path, name: str, document: Any) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(document))
    return str(path)


def test_templates_command_fills_the_table(db_url: str, engine: Engine) -> None:
    result = run(db_url, "templates", str(TEMPLATES))
    assert result.exit_code == 0, result.output
    assert re.search(r"2 templates read as event snap_[0-9a-f]{40}: applied", result.output), result.output
    listed = json.loads(TEMPLATES.read_text())["data"]
    found = {row["id"]: row for row in rows(engine, "invoice_rendering_templates")}
    eu = found["inrtem_1SyJ10B7WZ01zgkWtplEU01"]
    assert (eu["nickname"], eu["status"], eu["version"], eu["metadata"]) == (
        "EU invoices (VAT)",
        "active",
        3,
        {"region": "eu"},
    )
    assert (eu["created"], eu["livemode"]) == (T0 - 86400 * 30, False)
    # The file is an event in the log, the template a snapshot of it.
    event = one(engine, "stripe_events", id=eu["last_event_id"])
    assert (event["type"], event["source"], event["outcome"]) == (
        "snapshot.invoice_rendering_template",
        "file",
        "applied",
    )
    assert json.loads(event["payload"])["data"]["object"]["data"] == listed
    assert json.loads(eu["payload"]) == listed[0]
    assert found["inrtem_1SyJ11B7WZ01zgkWtplOLD1"]["status"] == "archived"


def test_templates_are_versioned_by_their_version(tmp_path: Path, db_url: str, engine: Engine) -> None:
    """By version first, then by when the file was loaded (each load a second after the last)."""
    listed = json.loads(TEMPLATES.read_text())
    with freeze_time("2026-02-01 00:00:00") as clock:
        run(db_url, "templates", str(TEMPLATES))
        older = copy.deepcopy(listed)
        older["data"][0].update(version=2, nickname="EU (old)")
        clock.tick(1)
        result = run(db_url, "templates", write(tmp_path, "older.json", older))
        assert "2 templates read" in result.output and ": applied" in result.output  # the second rewritten
        eu = one(engine, "invoice_rendering_templates", id="inrtem_1SyJ10B7WZ01zgkWtplEU01")
        assert eu["nickname"] == "EU invoices (VAT)"
        # Archiving does not bump the version; a re-fetch of the same version still wins.
        archived = copy.deepcopy(listed)
        archived["data"][0]["status"] = "archived"
        clock.tick(1)
        run(db_url, "templates", write(tmp_path, "archived.json", archived))
    assert (
        one(engine, "invoice_rendering_templates", id="inrtem_1SyJ10B7WZ01zgkWtplEU01")["status"]
        == "archived"
    )


def test_bad_input_is_refused_without_writing(tmp_path: Path, db_url: str, engine: Engine) -> None:
    not_a_list = run(db_url, "templates", write(tmp_path, "x.json", {"data": []}))
    assert not_a_list.exit_code != 0 and "Stripe list object" in not_a_list.output
    mixed = json.loads(TEMPLATES.read_text())
    mixed["data"].append({"id": "in_1", "object": "invoice"})
    refused = run(db_url, "templates", write(tmp_path, "mixed.json", mixed))
    assert refused.exit_code != 0 and "Not an invoice_rendering_template" in refused.output
    assert rows(engine, "invoice_rendering_templates") == []  # refused before anything is stored
    assert rows(engine, "stripe_events") == []


def test_pages_may_be_given_as_an_array(engine: Engine) -> None:
    listed = json.loads(TEMPLATES.read_text())
    first = {**listed, "data": listed["data"][:1], "has_more": True}
    second = {**listed, "data": listed["data"][1:], "has_more": False}
    page = parse_list([first, second])
    assert page.complete and [t["id"] for t in page.data] == [t["id"] for t in listed["data"]]
    assert not parse_list([first]).complete
    assert backfill_templates(engine, page.data).outcome == "applied"
    assert len(rows(engine, "invoice_rendering_templates")) == 2
    try:
        parse_list({"object": "invoice"})
    except BackfillError:
        pass
    else:
        raise AssertionError("a non-list document was accepted")


def test_lines_backfill_completes_an_invoice(db_url: str, engine: Engine) -> None:
    event = recorded("invoice.created.has_more")
    ingest_each(engine, event)
    assert one(engine, "invoices", id=INVOICE_G)["lines_incomplete"] is True
    assert len(rows(engine, "invoice_line_items")) == 10
    result = run(db_url, "lines", INVOICE_G, str(LINES_G))
    assert result.exit_code == 0, result.output
    assert "12 lines written" in result.output and "lines complete" in result.output
    found = sorted(rows(engine, "invoice_line_items"), key=lambda row: row["position"])
    assert [row["id"] for row in found] == [line["id"] for line in json.loads(LINES_G.read_text())["data"]]
    assert {row["last_event_id"] for row in found} == {event["id"]}  # attributed to the invoice version
    stored_lines = [row for row in rows(engine, "stripe_events") if row["type"] == "snapshot.invoice_lines"]
    assert [row["source"] for row in stored_lines] == ["file"]
    assert one(engine, "invoices", id=INVOICE_G)["lines_incomplete"] is False
    # Items behind the lines beyond the first page learn their invoice too.
    assert (
        one(engine, "invoice_item_invoices", invoice_item="ii_1SyK51B7WZ01zgkWusgG0011")["invoice"]
        == INVOICE_G
    )


def test_lines_backfill_removes_lines_no_longer_listed(tmp_path: Path, db_url: str, engine: Engine) -> None:
    ingest_each(engine, recorded("invoice.created.has_more"))
    page = json.loads(LINES_G.read_text())
    page["data"] = page["data"][2:]
    run(db_url, "lines", INVOICE_G, write(tmp_path, "lines.json", page))
    assert len(rows(engine, "invoice_line_items")) == 10


def test_a_partial_page_keeps_the_invoice_incomplete(tmp_path: Path, db_url: str, engine: Engine) -> None:
    ingest_each(engine, recorded("invoice.created.has_more"))
    page = json.loads(LINES_G.read_text()) | {"has_more": True}
    result = run(db_url, "lines", INVOICE_G, write(tmp_path, "lines.json", page))
    assert "still incomplete" in result.output
    assert one(engine, "invoices", id=INVOICE_G)["lines_incomplete"] is True
    assert len(rows(engine, "invoice_line_items")) == 12


def test_a_newer_event_after_the_backfill_decides_again(db_url: str, engine: Engine) -> None:
    ingest_each(engine, recorded("invoice.created.has_more"))
    run(db_url, "lines", INVOICE_G, str(LINES_G))
    newer = snapshot_of("invoice.created.has_more")
    newer["lines"]["data"] = newer["lines"]["data"][:5]
    ingest_each(engine, make_event("invoice.updated", newer, created=T0 + 4000))
    assert one(engine, "invoices", id=INVOICE_G)["lines_incomplete"] is True
    assert len(rows(engine, "invoice_line_items")) == 12  # has_more: nothing is known to be gone


def test_lines_of_an_unknown_invoice_are_refused(db_url: str, engine: Engine) -> None:
    result = run(db_url, "lines", INVOICE_G, str(LINES_G))
    assert result.exit_code != 0 and "not in the mirror yet" in result.output
    assert rows(engine, "invoice_line_items") == []


def test_lines_of_another_invoice_are_refused(db_url: str, engine: Engine) -> None:
    ingest_each(engine, recorded("invoice.created"))
    result = run(db_url, "lines", "in_1SyA10B7WZ01zgkWrnwlA001", str(LINES_G))
    assert result.exit_code != 0 and "Not a line of" in result.output


def test_exported_log_rebuilds_backfilled_templates_and_lines(
    tmp_path: Path, db_url: str, engine: Engine, sqlite_template: Path
) -> None:
    """What a file loaded is in the log: export, then replay into an empty database, gives the same mirror."""
    ingest_each(engine, recorded("invoice.created.has_more"))
    assert run(db_url, "templates", str(TEMPLATES)).exit_code == 0
    assert run(db_url, "lines", INVOICE_G, str(LINES_G)).exit_code == 0
    exported = CliRunner().invoke(cli, ["events", "export", "--database-url", db_url])
    assert exported.exit_code == 0
    recording = tmp_path / "log.jsonl"
    recording.write_text(exported.stdout)

    rebuilt_url = copy_sqlite(sqlite_template, tmp_path / "rebuilt.db")
    replayed = CliRunner().invoke(
        cli, ["replay", str(recording), "--direct", "--no-migrate", "--database-url", rebuilt_url]
    )
    assert replayed.exit_code == 0, replayed.output
    rebuilt = make_engine(rebuilt_url)
    try:
        assert dump(rebuilt) == dump(engine)
        assert len(rows(rebuilt, "invoice_line_items")) == 12
        assert one(rebuilt, "invoices", id=INVOICE_G)["lines_incomplete"] is False
        assert len(rows(rebuilt, "invoice_rendering_templates")) == 2
    finally:
        rebuilt.dispose()
