"""replay over HTTP: each answer of the endpoint is counted, rejections keep their reason."""

from __future__ import annotations

import json
from pathlib import Path

from starlette.testclient import TestClient

from app.recording.event_files import iter_sources
from app.recording.replay import replay_http
from tests.support import SECRET

SCENARIO = Path(__file__).parent.parent / "fixtures" / "scenarios" / "invoice_lifecycle.jsonl"
LINES = SCENARIO.read_text(encoding="utf-8").splitlines()


def test_answers_are_counted_and_rejections_explained(client: TestClient, tmp_path: Path) -> None:
    broken_payment = json.loads(LINES[7])
    broken_payment["id"] = "evt_http_broken"
    del broken_payment["data"]["object"]["id"]  # its handler raises: stored as failed, answered 500
    recording = tmp_path / "mixed.jsonl"
    recording.write_text(
        "\n".join(
            [*LINES, json.dumps({"object": "list_item", "id": "x"}), "{oops", json.dumps(broken_payment)]
        )
        + "\n"
    )
    summary = replay_http(iter_sources([str(recording)]), client, "/webhooks/stripe", SECRET)
    assert summary.as_dict() | {"reasons": None} == {
        "sent": 12,
        "applied": 9,
        "duplicates": 1,
        "stale": 0,
        "ignored": 1,
        "failed": 1,
        "rejected": 2,
        "reasons": None,
    }
    assert set(summary.reasons) == {
        "not an event envelope: Not a Stripe event: 'object' must be 'event'",
        "invalid JSON: Expecting property name enclosed in double quotes",
    }
    assert not summary.ok


def test_a_wrong_secret_is_rejected_with_the_servers_message(client: TestClient) -> None:
    summary = replay_http(
        iter_sources([str(SCENARIO)]), client, "/webhooks/stripe", "whsec_wrong", concurrency=3
    )
    assert summary.sent == 11 and summary.rejected == 11
    (reason,) = summary.reasons
    assert reason.startswith("400 no_matching_signature: No signatures found matching")


def test_concurrent_replay_gives_the_same_counts(client: TestClient) -> None:
    summary = replay_http(iter_sources([str(SCENARIO)]), client, "/webhooks/stripe", SECRET, concurrency=4)
    assert (summary.sent, summary.duplicates, summary.ignored, summary.rejected) == (11, 1, 1, 0)
    assert summary.applied + summary.stale == 9
