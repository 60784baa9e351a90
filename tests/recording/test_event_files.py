"""Reading recordings: JSONL, event files, directories, list envelopes, streamed through a small window."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from app.recording.event_files import ReadProgress, SourceProblem, SourceValue, iter_sources, iter_stream
from tests.support import load_fixture, make_event

FIXTURES = Path(__file__).parent.parent / "fixtures"
SCENARIO = FIXTURES / "scenarios" / "invoice_lifecycle.jsonl"
LINES = SCENARIO.read_text(encoding="utf-8").splitlines()


def values(items: list[object]) -> list[SourceValue]:
    assert all(isinstance(item, SourceValue) for item in items), items
    return items  # type: ignore[return-value]


@pytest.mark.parametrize("chunk", [7, 64, 1 << 20])
def test_jsonl_lines_keep_their_exact_text(chunk: int) -> None:
    text = "\r\n".join(LINES) + "\r\n\n"
    read = values(list(iter_stream(io.StringIO(text, newline=""), "rec.jsonl", chunk)))
    assert [item.raw for item in read] == LINES
    assert all(item.exact for item in read)
    assert [item.origin for item in read][:2] == ["rec.jsonl:1", "rec.jsonl:2"]


@pytest.mark.parametrize("chunk", [5, 1 << 20])
def test_invalid_lines_are_reported_and_skipped(chunk: int) -> None:
    text = f'{LINES[0]}\nnot json at all\n{{"half": \n{LINES[1]}\n[1, 2\n'
    read = list(iter_stream(io.StringIO(text, newline=""), "f", chunk))
    good = [item.raw for item in read if isinstance(item, SourceValue) and isinstance(item.body, dict)]
    assert good[0] == LINES[0] and LINES[1] in good
    problems = [item for item in read if isinstance(item, SourceProblem)]
    assert problems and problems[0].origin == "f:2" and problems[0].reason.startswith("invalid JSON")


def test_a_pretty_printed_event_file_is_one_event_with_its_exact_text() -> None:
    path = FIXTURES / "invoice.paid.json"
    (item,) = values(list(iter_sources([str(path)])))
    assert item.raw == path.read_text(encoding="utf-8").strip()
    assert item.body == load_fixture("invoice.paid.json")


def test_a_directory_is_read_file_by_file_in_name_order(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.json").write_text(
        json.dumps(make_event("x.y", {"id": "o2"}, event_id="evt_2"), indent=2)
    )
    (tmp_path / "a.jsonl").write_text("\n".join(LINES[:2]) + "\n")
    (tmp_path / "notes.txt").write_text("ignored")
    read = values(list(iter_sources([str(tmp_path)])))
    assert [item.body["id"] for item in read] == [
        json.loads(LINES[0])["id"],
        json.loads(LINES[1])["id"],
        "evt_2",
    ]


@pytest.mark.parametrize("indent", [None, 2])
@pytest.mark.parametrize("chunk", [16, 1 << 20])
def test_list_envelopes_yield_their_events(indent: int | None, chunk: int) -> None:
    events = [json.loads(line) for line in LINES]
    listing = {"object": "list", "data": events, "has_more": False, "url": "/v1/events"}
    text = json.dumps(listing, indent=indent)
    read = values(list(iter_stream(io.StringIO(text), "list.json", chunk)))
    assert [item.body for item in read] == events
    assert [item.raw for item in read] == LINES  # compact JSON, which is how the recording was written
    assert not any(item.exact for item in read)


def test_a_large_list_envelope_is_streamed_not_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    import app.recording.event_files as event_files

    monkeypatch.setattr(event_files, "WHOLE_VALUE_LIMIT", 1000)  # force the member-by-member reader
    events = [json.loads(line) for line in LINES] * 20
    text = json.dumps({"object": "list", "data": events, "has_more": False}, indent=1)

    class Tracked(io.StringIO):
        largest = 0

        def read(self, size: int | None = -1) -> str:
            data = super().read(size)
            Tracked.largest = max(Tracked.largest, len(data))
            return data

    read_events = values(list(iter_stream(Tracked(text), "big.json", chunk=4096)))
    assert [item.body for item in read_events] == events
    assert Tracked.largest <= 4096 * 4  # never read far ahead of one event


def test_top_level_arrays_and_stdin_style_streams() -> None:
    events = [json.loads(line) for line in LINES[:3]]
    read = values(list(iter_stream(io.StringIO(json.dumps(events)), "<stdin>")))
    assert [item.body for item in read] == events


def test_missing_paths_are_problems() -> None:
    (problem,) = list(iter_sources(["/nonexistent/recording.jsonl"]))
    assert isinstance(problem, SourceProblem) and "no such file" in problem.reason


def test_read_progress_follows_the_files_as_they_are_read(tmp_path: Path) -> None:
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text("\n".join(LINES * 40) + "\n", encoding="utf-8")
    second.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    total = first.stat().st_size + second.stat().st_size
    progress = ReadProgress()
    seen = []
    for _ in iter_sources([str(first), str(second)], progress=progress, chunk=4096):
        seen.append(progress.done_bytes)
    assert progress.total_bytes == total
    assert seen == sorted(seen) and 0 < seen[0] < first.stat().st_size  # read in chunks, not at once
    assert first.stat().st_size <= seen[-1] <= total
    assert progress.done_bytes == total
