"""billing-mirror invoices|meters|alerts|templates list|get on both databases, through click's CliRunner."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine

from app.cli.main import cli
from app.mirror.envelope import parse_event
from app.recording.backfill import backfill_templates, read_list, run_in_transaction
from tests.billing import EVENT_FIXTURES, INVOICE_A, METER, fixture_path, ingest, recorded
from tests.events import encode


@pytest.fixture
def mirror(engine: Engine) -> None:
    events = sorted(
        (recorded(name) for name in EVENT_FIXTURES), key=lambda e: (parse_event(encode(e)).created, e["id"])
    )
    ingest(engine, *events)
    templates = read_list(fixture_path("invoice_rendering_templates.list.json")).data
    run_in_transaction(engine, lambda session: backfill_templates(session, templates))


def run(db_url: str, *args: str) -> Result:
    result = CliRunner().invoke(cli, list(args), env={"DATABASE_URL": db_url}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def table_ids(output: str) -> list[str]:
    return [line.split()[0] for line in output.strip().splitlines()[1:]]


def test_invoices_list_and_get(db_url: str, mirror: None) -> None:
    paid = run(db_url, "invoices", "list", "--status", "paid")
    assert table_ids(paid.output) == ["in_1SyD10B7WZ01zgkWovrpD001", INVOICE_A]
    assert "41.50 usd" in paid.output and "QXG1O8VC-0007" in paid.output
    as_json = json.loads(
        run(db_url, "invoices", "list", "--created-gte", "2026-01-01T00:50:00", "--json").output
    )
    assert [obj["id"] for obj in as_json["data"]][-1] == "in_1SyK10B7WZ01zgkWmanyG001"
    assert run(db_url, "invoices", "get", "in_1SyE10B7WZ01zgkWdraftE01").output.strip().endswith("(deleted)")
    assert json.loads(run(db_url, "invoices", "get", INVOICE_A, "--json").output)["status"] == "paid"


def test_meters_alerts_templates(db_url: str, mirror: None) -> None:
    assert table_ids(run(db_url, "meters", "list", "--status", "active").output) == [METER]
    assert "api_requests" in run(db_url, "meters", "get", METER).output
    alerts = run(db_url, "alerts", "list", "--meter", METER)
    assert table_ids(alerts.output) == ["alrt_61SyG10B7WZ01zgkW3Rt5uVw"] and "100000" in alerts.output
    templates = run(db_url, "templates", "list", "--status", "archived")
    assert (
        table_ids(templates.output) == ["inrtem_1SyJ11B7WZ01zgkWtplOLD1"]
        and "Legacy layout" in templates.output
    )
