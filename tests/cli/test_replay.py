"""billing-mirror replay: arguments, stdin, exit status, summary."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from app.cli.main import cli

SCENARIO = Path(__file__).parent.parent / "fixtures" / "scenarios" / "invoice_lifecycle.jsonl"


def test_exactly_one_destination_is_required(tmp_path: Path) -> None:
    runner = CliRunner()
    neither = runner.invoke(cli, ["replay", str(SCENARIO)])
    both = runner.invoke(cli, ["replay", str(SCENARIO), "--direct", "--url", "http://127.0.0.1:9"])
    assert neither.exit_code == both.exit_code == 2
    assert "exactly one of --url URL or --direct" in both.output
    no_secret = runner.invoke(
        cli, ["replay", str(SCENARIO), "--url", "http://127.0.0.1:9"], env={"STRIPE_WEBHOOK_SECRET": ""}
    )
    assert no_secret.exit_code == 2 and "signing secret" in no_secret.output


def test_stdin_and_rejections_make_the_exit_status(db_url: str) -> None:
    recording = SCENARIO.read_text() + '{"object": "event"}\n'
    result = CliRunner().invoke(
        cli, ["replay", "-", "--direct", "--no-migrate"], input=recording, env={"DATABASE_URL": db_url}
    )
    assert result.exit_code == 1  # one line was not an event
    lines = result.output.splitlines()
    assert lines[0] == "sent 11, applied 9, duplicates 1, stale 0, ignored 1, failed 0, rejected 1"
    assert "rejected 1: not an event envelope: Event has no 'id' (e.g. <stdin>:12)" in lines[1]


def test_unreachable_server_is_a_rejection_not_a_crash() -> None:
    result = CliRunner().invoke(
        cli, ["replay", str(SCENARIO), "--url", "http://127.0.0.1:9", "--secret", "whsec_x", "--json"]
    )
    assert result.exit_code == 1
    summary = json.loads(result.output.splitlines()[-1])
    assert summary["rejected"] == 11 and summary["sent"] == 11
    assert all(reason.startswith("request failed: ConnectError") for reason in summary["reasons"])
