"""SqliteCommitter: group commit on the event loop, with a real writer process on a real file."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from sqlalchemy import Engine

from app.db.engine import make_engine
from app.ingest.apply import DatabaseUnavailable, IngestResult
from app.ingest.committer import WriterStats
from app.ingest.sqlite_committer import SEND_AT_EVENTS, SqliteCommitter
from app.mirror.envelope import Event
from tests.support import events, fails_for, items, stored


def test_concurrent_requests_share_commits_and_learn_their_outcome_only_after_it(
    file_engine: Engine, sqlite_file: Path
) -> None:
    batch = events("many", 300)

    async def scenario() -> tuple[list[IngestResult], int]:
        async with SqliteCommitter(str(sqlite_file), file_engine.dialect) as committer:

            async def deliver(event: Event) -> IngestResult:
                result = await committer.submit(event)
                # Committed before the answer: another connection sees the row already.
                assert stored(file_engine)[event.id][0] == "applied"
                return result

            results = await asyncio.gather(*(deliver(event) for event in batch))
        return list(results), committer.commits

    results, commits = asyncio.run(scenario())
    assert [(r.event_id, r.outcome, r.duplicate) for r in results] == [
        (e.id, "applied", False) for e in batch
    ]
    assert 1 <= commits < len(batch) // 10  # submitted in one loop iteration: a handful of transactions
    assert len(items(file_engine)) == len(batch)


def test_a_wave_of_requests_goes_out_in_parts_while_the_loop_plans_the_rest(
    file_engine: Engine, sqlite_file: Path
) -> None:
    """Every SEND_AT_EVENTS planned events are sent at once, not at the end of the loop iteration."""
    batch = events("wave", 2 * SEND_AT_EVENTS + 5)

    async def scenario() -> list[IngestResult]:
        async with SqliteCommitter(str(sqlite_file), file_engine.dialect) as committer:
            # All planned in the same loop iteration.
            results = list(await asyncio.gather(*(committer.submit(event) for event in batch)))
        stats.append(committer.stats)
        return results

    stats: list[WriterStats] = []
    results = asyncio.run(scenario())
    assert [(r.event_id, r.outcome) for r in results] == [(e.id, "applied") for e in batch]
    (sent,) = stats
    assert (sent.batches, sent.largest_batch, sent.events) == (3, SEND_AT_EVENTS, len(batch))


def test_a_duplicate_delivery_is_answered_as_such(file_engine: Engine, sqlite_file: Path) -> None:
    (event,) = events("dup", 1)

    async def scenario() -> list[IngestResult]:
        async with SqliteCommitter(str(sqlite_file), file_engine.dialect) as committer:
            first = await committer.submit(event)
            # The same event twice at once, and once more later.
            again = await asyncio.gather(committer.submit(event), committer.submit(event))
            return [first, *again]

    results = asyncio.run(scenario())
    assert [(r.outcome, r.duplicate) for r in results] == [
        ("applied", False),
        ("applied", True),
        ("applied", True),
    ]


def test_a_handler_failure_is_stored_as_failed(file_engine: Engine, sqlite_file: Path) -> None:
    batch = events("bug", 3)

    async def scenario() -> list[IngestResult]:
        async with SqliteCommitter(
            str(sqlite_file), file_engine.dialect, apply=fails_for("evt_bug_1")
        ) as committer:
            return list(await asyncio.gather(*(committer.submit(event) for event in batch)))

    results = asyncio.run(scenario())
    assert [r.outcome for r in results] == ["applied", "failed", "applied"]
    assert "handler bug on evt_bug_1" in (stored(file_engine)["evt_bug_1"][2] or "")
    assert set(items(file_engine)) == {"ii_bug_0", "ii_bug_2"}


def test_a_writer_that_dies_fails_the_requests_it_held_and_is_replaced(
    file_engine: Engine, sqlite_file: Path
) -> None:
    async def scenario() -> tuple[list[IngestResult | BaseException], list[IngestResult], int, int]:
        async with SqliteCommitter(str(sqlite_file), file_engine.dialect) as committer:
            await committer.submit(events("before", 1)[0])
            assert committer._child is not None
            first_pid = committer._child.link.process.pid
            # Stopped, the child cannot answer what it is sent; then it dies holding it.
            os.kill(first_pid, signal.SIGSTOP)
            held = [asyncio.ensure_future(committer.submit(event)) for event in events("held", 3)]
            await asyncio.sleep(0.2)
            assert not any(task.done() for task in held)
            os.kill(first_pid, signal.SIGKILL)
            lost = await asyncio.gather(*held, return_exceptions=True)
            after = list(await asyncio.gather(*(committer.submit(event) for event in events("after", 2))))
            assert committer._child is not None
            return list(lost), after, first_pid, committer._child.link.process.pid

    lost, after, first_pid, second_pid = asyncio.run(scenario())
    assert all(isinstance(result, DatabaseUnavailable) for result in lost)  # answered 503
    assert [r.outcome for r in after] == ["applied", "applied"]
    assert second_pid != first_pid
    assert set(stored(file_engine)) == {"evt_before_0", "evt_after_0", "evt_after_1"}


def test_a_database_that_cannot_be_opened_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "missing-folder" / "mirror.db"
    engine = make_engine(f"sqlite:///{path}")

    async def scenario() -> BaseException | IngestResult:
        async with SqliteCommitter(str(path), engine.dialect) as committer:
            return (await asyncio.gather(committer.submit(events("early", 1)[0]), return_exceptions=True))[0]

    try:
        assert isinstance(asyncio.run(scenario()), DatabaseUnavailable)
    finally:
        engine.dispose()


def test_stopping_answers_every_request_already_submitted(file_engine: Engine, sqlite_file: Path) -> None:
    batch = events("stop", 50)

    async def scenario() -> list[IngestResult]:
        async with SqliteCommitter(str(sqlite_file), file_engine.dialect) as committer:
            pending = [asyncio.ensure_future(committer.submit(event)) for event in batch]
            await asyncio.sleep(0)  # every request has planned and queued its event
        assert all(task.done() for task in pending)
        with pytest.raises(DatabaseUnavailable):  # nothing is taken once stopping
            await committer.submit(events("late", 1)[0])
        return [task.result() for task in pending]

    results = asyncio.run(scenario())
    assert [r.outcome for r in results] == ["applied"] * len(batch)
    assert len(stored(file_engine)) == len(batch)
