"""The recorded invoice lifecycle (tests/fixtures/scenarios/invoice_lifecycle.jsonl), replayed."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from app.cli.main import cli
from app.db.engine import make_engine
from app.ingest.store import EventStore
from app.recording.event_files import iter_sources
from app.recording.replay import ReplaySummary, replay_direct
from app.testing.dump import Dump, dump
from tests.support import SECRET, LiveServer, copy_sqlite, merge_applied_and_stale

SCENARIO = Path(__file__).parent.parent / "fixtures" / "scenarios" / "invoice_lifecycle.jsonl"
LINES = SCENARIO.read_text(encoding="utf-8").splitlines()
EXPECTED = {"sent": 11, "applied": 9, "duplicates": 1, "stale": 0, "ignored": 1, "failed": 0, "rejected": 0}


def run_cli(*args: str, env: dict[str, str] | None = None) -> dict[str, object]:
    result = CliRunner().invoke(cli, [*args, "--json"], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output.strip().splitlines()[-1])


def replay_direct_cli(database_url: str, path: Path = SCENARIO, *extra: str) -> dict[str, object]:
    return run_cli(
        "replay", str(path), "--direct", "--no-migrate", *extra, env={"DATABASE_URL": database_url}
    )


def dump_mirror(database_url: str) -> Dump:
    engine = make_engine(database_url, for_writing=False)
    try:
        return dump(engine)
    finally:
        engine.dispose()


def fresh_sqlite(sqlite_template: Path, tmp_path: Path, name: str) -> str:
    return copy_sqlite(sqlite_template, tmp_path / name)


def test_the_scenario_is_the_lifecycle_it_claims_to_be() -> None:
    events = [json.loads(line) for line in LINES]
    types = [event["type"] for event in events]
    assert types.count("invoiceitem.created") == 3
    assert types[3:9] == [
        "invoice.created",
        "invoiceitem.deleted",
        "invoice.updated",
        "invoice.finalized",
        "invoice_payment.paid",
        "invoice.paid",
    ]
    assert LINES[7] == LINES[9]  # a retried delivery: same id, same bytes
    draft_lines = events[3]["data"]["object"]["lines"]["data"]
    item_ids = {event["data"]["object"]["id"] for event in events[:3]}
    assert {line["parent"]["invoice_item_details"]["invoice_item"] for line in draft_lines} == item_ids
    assert events[8]["data"]["object"]["payments"]["data"][0]["status"] == "paid"


def test_http_replay_to_a_running_server_and_direct_replay_give_the_same_mirror(
    db_url: str, live_server: Callable[..., LiveServer], sqlite_template: Path, tmp_path: Path
) -> None:
    server = live_server()
    over_http = run_cli("replay", str(SCENARIO), "--url", server.url, "--secret", SECRET)
    assert {k: over_http[k] for k in EXPECTED} == EXPECTED
    direct_url = fresh_sqlite(sqlite_template, tmp_path, "direct.db")
    direct = replay_direct_cli(direct_url)
    assert {k: direct[k] for k in EXPECTED} == EXPECTED

    http_mirror = dump_mirror(db_url)
    assert http_mirror == dump_mirror(direct_url)
    # Byte-exact: the stored body of each event is its line in the recording.
    payloads = {row["id"]: row["payload"] for row in http_mirror["stripe_events"]}
    assert sorted(payloads.values()) == sorted(set(LINES))


def test_the_mirror_holds_the_end_of_the_lifecycle(db_url: str) -> None:
    replay_direct_cli(db_url)
    mirror = dump_mirror(db_url)
    items = {row["id"]: row for row in mirror["invoice_items"]}
    assert len(items) == 3
    deleted = [item for item in items.values() if item["deleted"]]
    assert [item["description"] for item in deleted] == ["Extra storage"]
    assert deleted[0]["deleted_by_event_id"] == json.loads(LINES[4])["id"]
    (payment,) = mirror["invoice_payments"]
    assert (payment["status"], payment["amount_paid"], payment["paid_at"]) == ("paid", 2000, 1_767_312_419)
    assert payment["last_event_id"] == json.loads(LINES[8])["id"]  # invoice.paid, the latest snapshot
    assert len(mirror["stripe_events"]) == 10


def test_replaying_twice_changes_nothing(db_url: str) -> None:
    replay_direct_cli(db_url)
    first = dump_mirror(db_url)
    again = replay_direct_cli(db_url)
    assert again["duplicates"] == 11 and again["applied"] == 0
    assert dump_mirror(db_url) == first


@pytest.mark.parametrize("seed", [7, 42, 2026])
def test_a_shuffled_replay_converges_to_the_same_mirror(
    db_url: str, seed: int, sqlite_template: Path, tmp_path: Path
) -> None:
    in_order_url = fresh_sqlite(sqlite_template, tmp_path, "in_order.db")
    replay_direct_cli(in_order_url)
    shuffled = LINES.copy()
    random.Random(seed).shuffle(shuffled)
    assert shuffled != LINES
    path = tmp_path / "shuffled.jsonl"
    path.write_text("\n".join(shuffled) + "\n", encoding="utf-8")
    # One event per transaction, so the shuffled order is really the order of application.
    summary = replay_direct_cli(db_url, path, "--batch-size", "1")
    assert summary["sent"] == 11 and summary["duplicates"] == 1 and summary["ignored"] == 1

    expected = dump_mirror(in_order_url)
    got = dump_mirror(db_url)
    for table in ("invoice_items", "invoice_payments"):
        assert got[table] == expected[table], table
    assert merge_applied_and_stale(got) == merge_applied_and_stale(expected)


def test_replay_in_process_reports_what_happened(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        summary: ReplaySummary = replay_direct(
            iter_sources([str(SCENARIO)]), EventStore(engine), batch_size=4
        )
    finally:
        engine.dispose()
    assert {k: summary.as_dict()[k] for k in EXPECTED} == EXPECTED
    assert summary.ok


def test_the_summary_counts_every_outcome_and_rejects_what_could_not_be_stored() -> None:
    """replay_direct's tally, against a store that answers each kind of result."""
    from app.ingest.apply import DatabaseUnavailable, IngestResult
    from app.mirror.outcome import Outcome
    from app.recording.event_files import SourceValue
    from app.recording.replay import replay_direct

    answers = [
        IngestResult("evt_a", Outcome.APPLIED),
        IngestResult("evt_b", Outcome.STALE),
        IngestResult("evt_c", Outcome.IGNORED),
        IngestResult("evt_d", Outcome.FAILED, error="boom"),
        IngestResult("evt_a", Outcome.APPLIED, duplicate=True),
        DatabaseUnavailable("database unavailable: OperationalError"),
        IngestResult("evt_e", Outcome.APPLIED),
    ]

    class AnsweringStore:
        def ingest_in_order(self, batches):  # type: ignore[no-untyped-def]
            offset = 0
            for events in batches:
                yield answers[offset : offset + len(events)]
                offset += len(events)

    def item(number: int) -> SourceValue:
        body = {"id": f"evt_{number}", "object": "event", "type": "invoice.paid", "created": 1}
        body["data"] = {"object": {"id": f"in_{number}", "object": "invoice"}}
        return SourceValue(body, json.dumps(body), f"file.jsonl:{number}", exact=True)

    summary = replay_direct([item(n) for n in range(len(answers))], AnsweringStore(), batch_size=3)
    assert summary.as_dict() == {
        "sent": 7,
        "applied": 2,
        "duplicates": 1,
        "stale": 1,
        "ignored": 1,
        "failed": 1,
        "rejected": 1,
        "reasons": {"database unavailable: OperationalError": 1},
    }
    assert summary.examples["database unavailable: OperationalError"] == ["file.jsonl:5"]


def test_a_replay_leaves_objects_frozen_by_others_frozen() -> None:
    """The replay freezes what was allocated before it, unless something else (a receiver in the
    same process) already froze objects: then unfreezing at the end would thaw those too."""
    import gc

    from app.recording.replay import _cyclic_gc_paused

    gc.unfreeze()  # from nothing frozen: a receiver started by an earlier test froze its objects
    with _cyclic_gc_paused():
        assert gc.get_freeze_count() > 0 and not gc.isenabled()
    assert gc.get_freeze_count() == 0 and gc.isenabled()
    gc.freeze()
    try:
        with _cyclic_gc_paused():
            pass
        # Not the exact count: a frozen object that another test's thread frees meanwhile leaves it.
        assert gc.get_freeze_count() > 0  # unfrozen, it would be 0
    finally:
        gc.unfreeze()
