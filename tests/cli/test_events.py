"""billing-mirror events export / list / show / retry, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import re
from pathlib import Path

from click.testing import CliRunner, Result
from sqlalchemy import Engine

from app.cli.main import cli
from app.ingest.store import EventStore
from app.mirror.envelope import parse_event
from tests.support import fails_for, item_event, stored

SCENARIO = Path(__file__).parent.parent / "fixtures" / "scenarios" / "invoice_lifecycle.jsonl"
LINES = SCENARIO.read_text(encoding="utf-8").splitlines()


def invoke(db_url: str, *args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env={"DATABASE_URL": db_url}, catch_exceptions=False)


def test_export_writes_the_stored_bodies_byte_for_byte(db_url: str, tmp_path: Path) -> None:
    odd = (
        '{"id":"evt_odd_1", "object" :"event","type":"invoiceitem.created","created":1767312005,'
        '"livemode":false,"data":{"object":{"id":"ii_odd","object":"invoiceitem",'
        '"description":"Caf\\u00e9 ☕"}}}'
    )
    recording = tmp_path / "recording.jsonl"
    recording.write_bytes(("\r\n".join([*LINES, odd]) + "\r\n").encode("utf-8"))
    assert invoke(db_url, "replay", str(recording), "--direct", "--no-migrate").exit_code == 0

    result = invoke(db_url, "events", "export")
    assert result.exit_code == 0
    exported = result.stdout_bytes.decode("utf-8").splitlines()
    in_order = sorted(
        dict.fromkeys([*LINES, odd]), key=lambda line: (json.loads(line)["created"], json.loads(line)["id"])
    )
    assert exported == in_order  # every stored event once, oldest first, exactly as recorded


def test_export_filters(db_url: str) -> None:
    invoke(db_url, "replay", str(SCENARIO), "--direct", "--no-migrate")
    by_type = invoke(db_url, "events", "export", "--type", "invoiceitem.*").stdout.splitlines()
    assert {json.loads(line)["type"] for line in by_type} == {"invoiceitem.created", "invoiceitem.deleted"}
    ignored = invoke(db_url, "events", "export", "--status", "ignored").stdout.splitlines()
    assert len(ignored) == 1  # customer.updated; invoice events are mirrored (issue #5)
    window = invoke(db_url, "events", "export", "--since", "2026-01-02T00:01:00Z", "--until", "1767312300")
    assert [json.loads(line)["type"] for line in window.stdout.splitlines()] == [
        "invoice.created",
        "invoiceitem.deleted",
        "invoice.updated",
    ]


def test_export_keeps_one_event_per_line_for_a_pretty_printed_body(db_url: str, engine: Engine) -> None:
    pretty = json.dumps(json.loads(LINES[0]), indent=2)
    EventStore(engine).ingest([parse_event(pretty.encode())])
    result = invoke(db_url, "events", "export")
    (line,) = result.stdout_bytes.decode().splitlines()
    assert json.loads(line) == json.loads(pretty)
    assert line == pretty.replace("\n", "")
    assert "line breaks" in result.stderr


def test_list_show_and_retry_failed_events(db_url: str, engine: Engine) -> None:
    events = [item_event(f"ii_cli_{n}", 100 + n, event_id=f"evt_cli_{n}") for n in range(3)]
    EventStore(engine, apply=fails_for("evt_cli_1", "evt_cli_2")).ingest(events)

    header, *listed = invoke(db_url, "events", "list", "--status", "failed").stdout.splitlines()
    assert header.split() == ["ID", "CREATED", "TYPE", "OUTCOME", "ATTEMPTS", "ERROR"]
    assert [line.split()[0] for line in listed] == ["evt_cli_2", "evt_cli_1"]
    assert "handler bug on evt_cli_2" in listed[0]
    assert re.split(r" {2,}", listed[0])[3:5] == ["failed", "1"]  # columns two spaces apart

    shown = invoke(db_url, "events", "show", "evt_cli_1")
    assert "outcome:     failed" in shown.stdout and "ii_cli_1" in shown.stdout
    assert invoke(db_url, "events", "show", "evt_cli_1", "--raw").stdout.strip() == events[1].raw
    assert invoke(db_url, "events", "show", "evt_missing").exit_code == 1

    one = invoke(db_url, "events", "retry", "evt_cli_1", "evt_cli_0", "evt_missing")
    assert one.exit_code == 1  # one of them was not found
    assert "evt_cli_1: applied" in one.stdout and "evt_cli_0: not failed" in one.stdout
    assert stored(engine)["evt_cli_1"][:2] == ("applied", 2)

    rest = invoke(db_url, "events", "retry", "--failed")
    assert rest.exit_code == 0, rest.output
    assert "evt_cli_2: applied" in rest.stdout
    assert {outcome for outcome, _, _ in stored(engine).values()} == {"applied"}
    assert invoke(db_url, "events", "retry", "--failed").stdout.strip() == "nothing to retry"


def test_retry_reports_events_that_fail_again(db_url: str, engine: Engine) -> None:
    # A stored event whose handler still raises: an invoice payment without an id.
    broken = json.loads(LINES[7])
    broken["id"] = "evt_cli_broken"
    del broken["data"]["object"]["id"]
    EventStore(engine).ingest([parse_event(json.dumps(broken).encode())])
    result = invoke(db_url, "events", "retry", "--failed")
    assert result.exit_code == 1
    assert "evt_cli_broken: failed: ValueError: invoice_payment object has no id" in result.stdout
    assert stored(engine)["evt_cli_broken"][:2] == ("failed", 2)


def test_list_shows_dead_letters_with_status_refused(db_url: str, engine: Engine) -> None:
    from app.ingest.plan import plan_refused
    from app.ingest.store import received_now

    refused = plan_refused(
        b'{"id": "evt_bad", "type": "invoice.paid"}',
        "invalid_event",
        "Event has no 'data.object'",
        received_now(engine.dialect),
    )
    EventStore(engine).ingest([refused, item_event("ii_fine", 1_767_225_600)])

    everything = invoke(db_url, "events", "list")
    assert "invoiceitem.created" in everything.stdout and "evt_bad" not in everything.stdout
    assert "1 refused deliveries are kept as dead letters" in everything.stderr

    letters = invoke(db_url, "events", "list", "--status", "refused")
    assert letters.exit_code == 0
    assert re.search(
        r"invalid_event\s+evt_bad\s+invoice\.paid\s+41\s+Event has no 'data.object'", letters.stdout
    )
    assert invoke(
        db_url, "events", "list", "--status", "refused", "--type", "invoiceitem.*"
    ).stderr.strip() == ("no stored event matches")
