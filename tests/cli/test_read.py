"""billing-mirror payments|items|invoices|meters|alerts|templates list|get on both databases, through
click's CliRunner; and the same tables as drawn on a terminal."""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine

from app.cli.main import cli
from app.cli.read import PAYMENT_COLUMNS, print_objects, print_record
from app.mirror.envelope import parse_event
from app.recording.backfill import backfill_templates, read_list
from tests.support import (
    EVENT_FIXTURES,
    INVOICE_A,
    METER,
    encode,
    fixture_path,
    ingest_batch,
    ingest_each,
    item,
    item_created,
    item_deleted,
    payment,
    payment_event,
    recorded,
)

T0 = 1_767_225_600  # 2026-01-01 00:00:00 UTC


@pytest.fixture
def mirror(engine: Engine) -> None:
    ingest_batch(
        engine,
        [
            payment_event(payment("inpay_01", T0 + 10, invoice="in_A", ref="pi_1", amount=2000)),
            payment_event(
                payment("inpay_02", T0 + 20, invoice="in_A", status="open", ref="pi_2", amount=1999)
            ),
            payment_event(
                payment("inpay_03", T0 + 30, invoice="in_B", kind="charge", ref="ch_3", amount=500)
            ),
            item_created(item("ii_01", T0 + 10, customer="cus_A", invoice="in_A", description="Seats")),
            item_created(item("ii_02", T0 + 20, customer="cus_A", amount=4250, description="Setup fee")),
            item_created(item("ii_03", T0 + 30, customer="cus_B")),
            item_created(item("ii_04", T0 + 40, customer="cus_A")),
        ],
    )
    ingest_batch(engine, [item_deleted("ii_04", T0 + 50)])


def run(db_url: str, *args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env={"DATABASE_URL": db_url}, catch_exceptions=False)


def table_ids(output: str) -> list[str]:
    lines = output.strip().splitlines()
    return [line.split()[0] for line in lines[1:]]


def test_payments_table(db_url: str, mirror: None) -> None:
    result = run(db_url, "payments", "list")
    assert result.exit_code == 0, result.output
    header, *rows = result.output.strip().splitlines()
    assert header.split()[:3] == ["ID", "STATUS", "REQUESTED"]
    assert table_ids(result.output) == ["inpay_03", "inpay_02", "inpay_01"]
    assert "inpay_03  paid    5.00 usd" in rows[0]
    assert "charge:ch_3" in rows[0] and "2026-01-01 00:00:30" in rows[0]


def test_payments_filters_and_json(db_url: str, mirror: None) -> None:
    result = run(db_url, "payments", "list", "--invoice", "in_A", "--status", "paid", "--json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert body["object"] == "list" and body["url"] == "/v1/invoice_payments" and body["has_more"] is False
    assert [obj["id"] for obj in body["data"]] == ["inpay_01"]
    assert body["data"][0] == payment("inpay_01", T0 + 10, invoice="in_A", ref="pi_1", amount=2000)

    by_intent = run(db_url, "payments", "list", "--payment-type=payment_intent", "--payment-intent=pi_2")
    assert table_ids(by_intent.output) == ["inpay_02"]
    since = run(db_url, "payments", "list", "--created-gte", "2026-01-01T00:00:20")
    assert table_ids(since.output) == ["inpay_03", "inpay_02"]


def test_items_table_filters_and_paging(db_url: str, mirror: None) -> None:
    result = run(db_url, "items", "list", "--customer", "cus_A", "--pending")
    assert result.exit_code == 0, result.output
    assert table_ids(result.output) == ["ii_02"]  # ii_04 is deleted
    assert "42.50 usd" in result.output and "(pending)" in result.output

    first = run(db_url, "items", "list", "--limit", "2")
    assert table_ids(first.output.split("…")[0]) == ["ii_03", "ii_02"]
    assert "--starting-after ii_02" in first.output
    everything = run(db_url, "items", "list", "--limit", "1", "--all", "--json")
    body = json.loads(everything.output)
    assert [obj["id"] for obj in body["data"]] == ["ii_03", "ii_02", "ii_01"] and body["has_more"] is False
    invoiced = run(db_url, "items", "list", "--no-pending", "--created", str(T0 + 10))
    assert table_ids(invoiced.output) == ["ii_01"]


def test_get(db_url: str, mirror: None) -> None:
    shown = run(db_url, "payments", "get", "inpay_02")
    assert shown.exit_code == 0
    assert "STATUS" in shown.output and "open" in shown.output and "19.99 usd" in shown.output
    as_json: dict[str, Any] = json.loads(run(db_url, "items", "get", "ii_01", "--json").output)
    assert as_json["id"] == "ii_01" and as_json["description"] == "Seats"
    deleted = json.loads(run(db_url, "items", "get", "ii_04", "--json").output)
    assert deleted == {"id": "ii_04", "object": "invoiceitem", "deleted": True}
    assert "(deleted)" in run(db_url, "items", "get", "ii_04").output


def test_errors(db_url: str, mirror: None) -> None:
    missing = run(db_url, "payments", "get", "inpay_nope")
    assert missing.exit_code == 1 and "No such invoice_payment: 'inpay_nope'" in missing.output
    bad_cursor = run(db_url, "items", "list", "--starting-after", "ii_nope")
    assert bad_cursor.exit_code == 2 and "No such invoiceitem: 'ii_nope'" in bad_cursor.output
    bad_limit = run(db_url, "items", "list", "--limit", "101")
    assert bad_limit.exit_code == 2
    mismatched = run(db_url, "payments", "list", "--payment-type", "charge", "--payment-intent", "pi_1")
    assert mismatched.exit_code == 2 and "payment[payment_intent]" in mismatched.output
    assert run(db_url, "items", "list", "--created-gte", "next week").exit_code == 2
    assert "No payments match." in run(db_url, "payments", "list", "--invoice", "in_Z").output


def test_missing_sqlite_file_is_explained(tmp_path: Path) -> None:
    result = run(f"sqlite:///{tmp_path / 'absent.db'}", "items", "list")
    assert result.exit_code == 1 and "No mirror database" in result.output
    assert not (tmp_path / "absent.db").exists()


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_same_cells_make_a_rich_table(
    db_url: str, mirror: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = json.loads(run(db_url, "payments", "list", "--json").output)["data"]
    plain = run(db_url, "payments", "list").output.splitlines()
    shown = run(db_url, "payments", "get", "inpay_02").output.splitlines()
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.delenv("NO_COLOR", raising=False)
    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    print_objects(PAYMENT_COLUMNS, objects)
    assert "\x1b[1m" in terminal.getvalue()  # a bold header
    header, rule, *rows = re.sub(r"\x1b\[[0-9;]*m", "", terminal.getvalue()).splitlines()
    assert header.split() == plain[0].split() and set(rule) == {"─"}
    assert [row.split() for row in rows] == [line.split() for line in plain[1:]]  # the same cells

    terminal.seek(0)
    terminal.truncate()
    print_record(PAYMENT_COLUMNS, objects[1])
    drawn = re.sub(r"\x1b\[[0-9;]*m", "", terminal.getvalue()).splitlines()
    assert [line.split() for line in drawn] == [line.split() for line in shown]


# ---- invoices, meters, alerts, templates: the recorded deliveries and the templates backfill ----


@pytest.fixture
def billing_mirror(engine: Engine) -> None:
    events = sorted(
        (recorded(name) for name in EVENT_FIXTURES), key=lambda e: (parse_event(encode(e)).created, e["id"])
    )
    ingest_each(engine, *events)
    templates = read_list(fixture_path("invoice_rendering_templates.list.json")).data
    backfill_templates(engine, templates)


def run_ok(db_url: str, *args: str) -> Result:
    result = run(db_url, *args)
    assert result.exit_code == 0, result.output
    return result


def test_invoices_list_and_get(db_url: str, billing_mirror: None) -> None:
    paid = run_ok(db_url, "invoices", "list", "--status", "paid")
    assert table_ids(paid.output) == ["in_1SyD10B7WZ01zgkWovrpD001", INVOICE_A]
    assert "41.50 usd" in paid.output and "QXG1O8VC-0007" in paid.output
    as_json = json.loads(
        run_ok(db_url, "invoices", "list", "--created-gte", "2026-01-01T00:50:00", "--json").output
    )
    assert [obj["id"] for obj in as_json["data"]][-1] == "in_1SyK10B7WZ01zgkWmanyG001"
    deleted = run_ok(db_url, "invoices", "get", "in_1SyE10B7WZ01zgkWdraftE01")
    assert deleted.output.strip().endswith("(deleted)")
    assert json.loads(run_ok(db_url, "invoices", "get", INVOICE_A, "--json").output)["status"] == "paid"


def test_meters_alerts_templates(db_url: str, billing_mirror: None) -> None:
    assert table_ids(run_ok(db_url, "meters", "list", "--status", "active").output) == [METER]
    assert "api_requests" in run_ok(db_url, "meters", "get", METER).output
    alerts = run_ok(db_url, "alerts", "list", "--meter", METER)
    assert table_ids(alerts.output) == ["alrt_61SyG10B7WZ01zgkW3Rt5uVw"] and "100000" in alerts.output
    templates = run_ok(db_url, "templates", "list", "--status", "archived")
    assert (
        table_ids(templates.output) == ["inrtem_1SyJ11B7WZ01zgkWtplOLD1"]
        and "Legacy layout" in templates.output
    )
