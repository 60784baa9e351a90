"""The SQLite writer process: a real child process on a real file, and its background checkpoints."""

from __future__ import annotations

import io
import marshal
import os
import pickle
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from app.db.engine import make_engine
from app.db.sqlite_setup import BackgroundCheckpointer, configure_connection
from app.ingest.apply import DatabaseUnavailable, IngestResult
from app.ingest.plan import plan_event
from app.ingest.sqlite_writer import WAL_RESTART_FRAMES, WalSyncer
from app.ingest.store import WriterProcessStore
from app.ingest.writer_process import SqliteWriterProcess, WriterProcessError
from app.ingest.writer_protocol import CHUNK_EVENTS, decode_request, encode_batch, read_payload
from app.mirror.envelope import Event
from tests.support import events, fails_for, items, stored


class MarshalRefuses(str):
    """A str subclass: pickle takes it, marshal does not."""


def test_a_batch_larger_than_a_chunk_is_one_transaction_answered_after_its_commit(
    file_engine: Engine, sqlite_file: Path
) -> None:
    batch = events("big", CHUNK_EVENTS * 2 + 7)
    with SqliteWriterProcess(str(sqlite_file)) as writer:
        results = WriterProcessStore(file_engine, writer).ingest(batch)
        assert writer.commits == 1
        # The future resolved only after COMMIT: another connection sees every row already.
        assert len(stored(file_engine)) == len(batch)
    assert [(r.event_id, r.outcome, r.duplicate) for r in results] == [
        (event.id, "applied", False) for event in batch
    ]


def test_batches_from_several_threads_get_their_own_results(file_engine: Engine, sqlite_file: Path) -> None:
    batches = [events(f"t{n}", 30 + n) for n in range(12)]
    with SqliteWriterProcess(str(sqlite_file)) as writer:
        store = WriterProcessStore(file_engine, writer)
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(store.ingest, batches))
    for batch, results in zip(batches, answers, strict=True):
        assert [r.event_id for r in results if isinstance(r, IngestResult)] == [e.id for e in batch]
    assert len(items(file_engine)) == sum(len(batch) for batch in batches)


def test_batches_queued_behind_a_busy_writer_share_one_transaction(
    file_engine: Engine, sqlite_file: Path
) -> None:
    with SqliteWriterProcess(str(sqlite_file)) as writer:
        store = WriterProcessStore(file_engine, writer)
        batches = [events("busy", 3000)] + [events(f"queued{n}", 5) for n in range(6)]
        futures = [store._submit(batch, keep_order=False) for batch in batches]
        answers = [future.result(timeout=60) for future in futures]
        # The six small batches arrived while the big one was being written: far fewer commits.
        assert writer.commits < len(batches) - 2
    for batch, results in zip(batches, answers, strict=True):
        assert [(r.event_id, r.outcome) for r in results if isinstance(r, IngestResult)] == [
            (event.id, "applied") for event in batch
        ]
    assert len(stored(file_engine)) == sum(len(batch) for batch in batches)


def test_a_handler_failure_in_the_planner_is_stored_as_failed_by_the_writer(
    file_engine: Engine, sqlite_file: Path
) -> None:
    batch = events("bug", 3)
    with SqliteWriterProcess(str(sqlite_file)) as writer:
        results = WriterProcessStore(file_engine, writer, apply=fails_for("evt_bug_1")).ingest(batch)
    assert [r.outcome for r in results] == ["applied", "failed", "applied"]
    assert "handler bug on evt_bug_1" in (stored(file_engine)["evt_bug_1"][2] or "")
    assert set(items(file_engine)) == {"ii_bug_0", "ii_bug_2"}


def test_a_writer_that_dies_fails_its_batches_and_is_replaced(file_engine: Engine, sqlite_file: Path) -> None:
    with SqliteWriterProcess(str(sqlite_file)) as writer:
        store = WriterProcessStore(file_engine, writer)
        store.ingest(events("before", 2))
        child = writer._require_child().process
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
        with pytest.raises(WriterProcessError, match="exit status -9"):
            writer.submit([], keep_order=False).result(timeout=10)
        # The store answers the batch as unavailable (a receiver says 503) and starts a new child.
        lost = store.ingest(events("during", 2))
        assert all(isinstance(result, DatabaseUnavailable) for result in lost)
        after = store.ingest(events("during", 2))
        assert [r.outcome for r in after if isinstance(r, IngestResult)] == ["applied", "applied"]
        assert writer._require_child().process.pid != child.pid
    assert set(stored(file_engine)) == {"evt_before_0", "evt_before_1", "evt_during_0", "evt_during_1"}


def test_a_database_that_cannot_be_opened_is_unavailable_until_it_can(
    tmp_path: Path, sqlite_template: Path
) -> None:
    folder = tmp_path / "not-yet"
    path = folder / "mirror.db"
    engine = make_engine(f"sqlite:///{path}")
    try:
        with SqliteWriterProcess(str(path)) as writer:
            store = WriterProcessStore(engine, writer)
            first = store.ingest(events("early", 1))
            assert isinstance(first[0], DatabaseUnavailable)
            folder.mkdir()
            shutil.copyfile(sqlite_template, path)
            later = store.ingest(events("early", 1))
            assert [(r.outcome, r.duplicate) for r in later if isinstance(r, IngestResult)] == [
                ("applied", False)
            ]
    finally:
        engine.dispose()


def test_the_writer_connection_is_set_up_like_every_other(file_engine: Engine, sqlite_file: Path) -> None:
    """A replay and a receiver must agree on durability: the child syncs every commit too."""
    with SqliteWriterProcess(str(sqlite_file)) as writer:
        WriterProcessStore(file_engine, writer).ingest(events("mode", 1))
    with file_engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"


def test_background_checkpoints_copy_the_wal_into_the_database_file(sqlite_file: Path) -> None:
    connection = sqlite3.connect(sqlite_file, isolation_level=None)
    configure_connection(connection, autocheckpoint=0)
    checkpointer = BackgroundCheckpointer(str(sqlite_file), interval=0.01)
    checkpointer.start()
    try:
        connection.execute("BEGIN IMMEDIATE")
        connection.executemany(
            "INSERT INTO invoice_line_sets (invoice, last_event_id, last_event_created, version_precedence,"
            " version_tiebreak) VALUES (?, 'evt', 1, 0, 0)",
            [(f"in_{n}",) for n in range(2000)],
        )
        connection.execute("COMMIT")
        checkpointer.committed()
        deadline = time.monotonic() + 10
        while checkpointer.checkpoints == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        checkpointer.stop()
    assert checkpointer.checkpoints >= 1
    # Nothing is left to copy: every frame of the WAL is already in the database file.
    _busy, log_frames, checkpointed = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    connection.close()
    assert log_frames > 0 and checkpointed == log_frames


def test_plans_are_plain_data(file_engine: Engine) -> None:
    """What crosses the pipe: SQL text and driver values, nothing that needs the planning process."""
    (event,) = events("data", 1)
    planned = plan_event(event, file_engine.dialect, "2026-11-23 12:00:00.000000")
    assert planned.writes
    for sql, params, many in planned.writes:
        assert isinstance(sql, str) and many is False
        assert all(value is None or type(value) in (str, int, float, bool) for value in params)
    assert pickle.loads(pickle.dumps(planned)) == planned
    # It crosses as marshal data: plain tuples, lists, strings and numbers only.
    assert marshal.loads(marshal.dumps(tuple(planned))) == tuple(planned)
    assert b"".join(encode_batch([planned], keep_order=False))[4:5] == b"m"


def test_a_batch_marshal_refuses_crosses_pickled(file_engine: Engine, sqlite_file: Path) -> None:
    """A value of another type in a plan (none today) must still arrive, not break the pipe."""
    (event,) = events("odd", 1)
    planned = plan_event(event, file_engine.dialect, "2026-11-23 12:00:00.000000")
    odd = planned._replace(row=(*planned.row[:-1], MarshalRefuses("2026-11-23 12:00:00.000000")))
    chunk = b"".join(encode_batch([odd], keep_order=True))
    assert chunk[4:5] == b"p"
    (decoded,), keep_order, last = decode_request(read_payload(io.BytesIO(chunk)))
    assert (decoded, keep_order, last) == (tuple(odd), True, True)


def test_the_writer_process_imports_no_sqlalchemy() -> None:
    """It starts with each server and each replay: it must stay light to import."""
    probe = (
        "import sys, app.ingest.sqlite_writer;"
        " print(sorted(m for m in ('sqlalchemy', 'sqlmodel') if m in sys.modules))"
    )
    output = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"


def test_answers_leave_only_after_the_wal_is_synced_and_queued_ones_share_a_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = tmp_path / "mirror.db"
    (tmp_path / "mirror.db-wal").write_bytes(b"frames")
    sent = io.BytesIO()
    syncing, release = threading.Event(), threading.Event()
    seen_at_sync: list[bytes] = []
    real_fdatasync = os.fdatasync

    def slow_fdatasync(fd: int) -> None:
        seen_at_sync.append(sent.getvalue())
        syncing.set()
        release.wait(10)
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", slow_fdatasync)
    syncer = WalSyncer(str(database), sent)
    syncer.start()
    syncer.answer(b"first;")
    assert syncing.wait(10)
    for data in (b"second;", b"third;", b"fourth;"):  # committed while the first sync runs
        syncer.answer(data)
    time.sleep(0.05)
    assert sent.getvalue() == b""  # nothing leaves before its sync returned
    release.set()
    syncer.stop()
    assert sent.getvalue() == b"first;second;third;fourth;"
    assert seen_at_sync == [b"", b"first;"]  # the three queued meanwhile shared the second sync
    assert syncer.syncs == 2


def test_the_syncer_follows_a_wal_file_that_was_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = tmp_path / "mirror.db"
    wal = tmp_path / "mirror.db-wal"
    wal.write_bytes(b"old")
    synced: list[int] = []
    real_fdatasync = os.fdatasync

    def recording_fdatasync(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", recording_fdatasync)
    syncer = WalSyncer(str(database), io.BytesIO())
    syncer._sync()
    wal.unlink()
    syncer._sync()  # no WAL at all: nothing to sync, nothing fails
    wal.write_bytes(b"new")
    syncer._sync()
    assert synced == [synced[0], wal.stat().st_ino] and synced[0] != synced[1]


def test_the_wal_starts_over_instead_of_growing(file_engine: Engine, sqlite_file: Path) -> None:
    """A long stream of batches: background passes plus the writer's remainder keep the WAL small."""
    wal = Path(f"{sqlite_file}-wal")
    with SqliteWriterProcess(str(sqlite_file)) as writer:
        store = WriterProcessStore(file_engine, writer)
        # Pipelined (one batch written while the next is sent): the writer never pauses, so the WAL
        # can only start over through the writer's own checkpoint after a background pass.
        batches = (events(f"wal{number}", 400) for number in range(80))
        for results in store.ingest_in_order(batches):
            assert all(isinstance(result, IngestResult) for result in results)
        largest_wal = wal.stat().st_size
    written = len(stored(file_engine))
    assert written == 80 * 400
    database = sqlite_file.stat().st_size
    # Without restarts the WAL would hold every frame ever written, more than the database itself;
    # with them it stays within a few restart thresholds.
    assert largest_wal < database / 2, (largest_wal, database)
    assert largest_wal < 3 * WAL_RESTART_FRAMES * (4096 + 24)


def test_a_replay_keeps_several_batches_in_flight(
    file_engine: Engine, sqlite_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Answers are awaited only once more than IN_FLIGHT_EVENTS were sent: planning does not stop
    for each commit's sync. They still come back in order, one list per batch."""
    monkeypatch.setattr("app.ingest.store.IN_FLIGHT_EVENTS", 250)
    sent: list[int] = []
    with SqliteWriterProcess(str(sqlite_file)) as writer:
        store = WriterProcessStore(file_engine, writer)

        def batches() -> Iterator[list[Event]]:
            for number in range(8):
                sent.append(number)
                yield events(f"flight{number}_", 100)

        sent_before_answer = []
        for number, results in enumerate(store.ingest_in_order(batches())):
            sent_before_answer.append(len(sent))
            assert [result.event_id for result in results] == [  # type: ignore[union-attr]
                f"evt_flight{number}__{index}" for index in range(100)
            ]
    # Three batches (300 events > 250) went out before the first answer was awaited, and the
    # window then slid one batch at a time.
    assert sent_before_answer == [3, 4, 5, 6, 7, 8, 8, 8]
    assert len(stored(file_engine)) == 800
