"""billing-mirror replay: arguments, stdin, exit status, summary, retries, the progress bar."""

from __future__ import annotations

import io
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import rich.progress
import stamina
from click.testing import CliRunner

from app.cli.main import cli
from app.cli.replay import UPDATE_SECONDS, ReplayProgress
from app.recording.event_files import ReadProgress
from app.recording.replay import Answer, deliver

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


def test_a_replay_into_postgresql_takes_short_turns_on_the_gil_and_gives_them_back(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Into PostgreSQL the planning thread and the writer thread take turns of 0.5 ms instead of
    the interpreter's 5; on SQLite (whose writer is a process) the turns stay as they are."""
    import app.cli.replay as replay_command

    during: list[float] = []
    real_replay_direct = replay_command.replay_direct

    def observed(*args: Any, **kwargs: Any) -> Any:
        during.append(sys.getswitchinterval())
        return real_replay_direct(*args, **kwargs)

    monkeypatch.setattr(replay_command, "replay_direct", observed)
    before = sys.getswitchinterval()
    result = CliRunner().invoke(
        cli, ["replay", str(SCENARIO), "--direct", "--no-migrate"], env={"DATABASE_URL": db_url}
    )
    assert result.exit_code == 0, result.output
    expected = before if db_url.startswith("sqlite") else replay_command.POSTGRES_REPLAY_GIL_TURN_SECONDS
    assert during == [expected]
    assert sys.getswitchinterval() == before


def test_unreachable_server_is_a_rejection_not_a_crash() -> None:
    result = CliRunner().invoke(
        cli, ["replay", str(SCENARIO), "--url", "http://127.0.0.1:9", "--secret", "whsec_x", "--json"]
    )
    assert result.exit_code == 1
    summary = json.loads(result.output.splitlines()[-1])
    assert summary["rejected"] == 11 and summary["sent"] == 11
    assert all(reason.startswith("request failed: ConnectError") for reason in summary["reasons"])


class Flaky:
    """A receiver that answers with the given statuses in turn (503: the database is unavailable)."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.posts = 0

    def post(self, url: str, *, content: bytes, headers: dict[str, str]) -> httpx.Response:
        self.posts += 1
        status = self.statuses.pop(0)
        if status == 503:
            return httpx.Response(503, json={"error": {"type": "database_unavailable", "message": "down"}})
        return httpx.Response(status, json={"received": True, "outcome": "applied", "duplicate": False})


def test_a_503_is_retried_then_reported() -> None:
    with stamina.set_testing(True, attempts=10, cap=True):  # the configured attempts, without sleeping
        recovered = Flaky(503, 503, 200)
        assert deliver(recovered, "http://mirror/webhooks/stripe", b"{}", "whsec_x") == Answer("applied")
        assert recovered.posts == 3
        down = Flaky(*[503] * 5)
        answer = deliver(down, "http://mirror/webhooks/stripe", b"{}", "whsec_x")
        assert answer == Answer(rejection="503 database_unavailable: down") and down.posts == 4


def test_a_failed_request_is_not_retried() -> None:
    class Refusing:
        posts = 0

        def post(self, url: str, *, content: bytes, headers: dict[str, str]) -> Any:
            self.posts += 1
            raise httpx.ConnectError("refused")

    client = Refusing()
    with stamina.set_testing(True, attempts=10, cap=True):
        answer = deliver(client, "http://mirror/webhooks/stripe", b"{}", "whsec_x")
    assert answer == Answer(rejection="request failed: ConnectError: refused") and client.posts == 1


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_bar_is_drawn_on_a_terminal_only_and_not_per_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    updates = 0
    update = rich.progress.Progress.update

    def counted(self: rich.progress.Progress, *args: Any, **kwargs: Any) -> None:
        nonlocal updates
        updates += 1
        update(self, *args, **kwargs)

    monkeypatch.setattr(rich.progress.Progress, "update", counted)
    monkeypatch.setenv("COLUMNS", "120")
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    read = ReadProgress()
    started = time.monotonic()
    with ReplayProgress(read) as progress:
        for _ in range(100_000):
            progress.tick(1)
    seconds = time.monotonic() - started
    assert progress.enabled and progress.count == 100_000
    assert updates <= seconds / UPDATE_SECONDS + 2  # the figures, a few times a second, and the last
    drawn = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", terminal.getvalue())
    assert "replayed" in drawn and "100,000 events" in drawn

    drawn_before, updates_before = terminal.getvalue(), updates
    silent = ReplayProgress(ReadProgress(), enabled=False)
    with silent:
        silent.tick(500)
    assert silent.count == 500 and updates == updates_before and terminal.getvalue() == drawn_before
