"""The one codec of the SQLite writer child's pipes: what a parent encodes, the child decodes, and back."""

from __future__ import annotations

import io
import random

import pytest

from app.ingest.apply import DatabaseUnavailable, IngestResult, PlannedEvent
from app.ingest.writer_protocol import (
    CHUNK_EVENTS,
    DONE_FRAME,
    FrameSplitter,
    decode_answer,
    decode_request,
    encode_answer,
    encode_batch,
    read_payload,
)
from app.mirror.outcome import Outcome


def planned(number: int) -> PlannedEvent:
    event_id = f"evt_{number}"
    row = (event_id, "invoiceitem.created", 1767225600 + number, None, False, None, False, None, "{}", "now")
    return PlannedEvent(event_id, row, [("INSERT INTO x VALUES (?)", [number], False)])


def test_a_batch_crosses_in_chunks_and_only_its_last_is_marked() -> None:
    events = [planned(number) for number in range(2 * CHUNK_EVENTS + 50)]
    stream = io.BytesIO(b"".join(encode_batch(events, keep_order=True)) + DONE_FRAME)
    chunks = []
    while (chunk := decode_request(read_payload(stream))) is not None:
        chunks.append(chunk)
    assert [(len(part), keep_order, last) for part, keep_order, last in chunks] == [
        (CHUNK_EVENTS, True, False),
        (CHUNK_EVENTS, True, False),
        (50, True, True),
    ]
    assert [event for part, _, _ in chunks for event in part] == [tuple(event) for event in events]
    with pytest.raises(EOFError):
        read_payload(stream)


def test_an_empty_batch_is_one_last_chunk() -> None:
    stream = io.BytesIO(b"".join(encode_batch([], keep_order=False)))
    assert decode_request(read_payload(stream)) == ([], False, True)


def test_a_frame_cut_short_is_the_end_of_the_stream() -> None:
    frame = b"".join(encode_batch([planned(1)], keep_order=False))
    with pytest.raises(EOFError):
        read_payload(io.BytesIO(frame[:-1]))
    with pytest.raises(EOFError):
        read_payload(io.BytesIO(frame[:2]))


def test_answers_split_anywhere_arrive_whole_and_in_order() -> None:
    answers = [
        ([IngestResult("evt_1", Outcome.APPLIED)], 1),
        ([IngestResult("evt_2", Outcome.STALE), IngestResult("evt_3", Outcome.FAILED, error="boom")], 2),
        ([DatabaseUnavailable("database unavailable: OperationalError")], 2),
    ]
    data = b"".join(encode_answer(results, commits) for results, commits in answers)
    cuts = sorted(random.Random(7).sample(range(1, len(data)), 12))
    splitter = FrameSplitter()
    payloads = []
    for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
        payloads.extend(splitter.feed(data[start:end]))
    decoded = [decode_answer(payload) for payload in payloads]
    assert [(results[:2], commits) for results, commits in decoded[:2]] == answers[:2]
    (unavailable,), commits = decoded[2]
    assert isinstance(unavailable, DatabaseUnavailable) and commits == 2
    assert str(unavailable) == "database unavailable: OperationalError"
    # Read from a blocking stream, the same bytes give the same answers.
    stream = io.BytesIO(data)
    assert [decode_answer(read_payload(stream))[1] for _ in answers] == [1, 2, 2]
