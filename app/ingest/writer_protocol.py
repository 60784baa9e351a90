"""The one codec between the SQLite writer child and its parents: frames both ways, the same for the
receiver's committer (app.ingest.sqlite_committer), the replay's client (app.ingest.writer_process)
and the child (app.ingest.sqlite_writer).

A frame is a 4-byte big-endian length, then the payload. Requests (parent to child) are chunks of a
batch of planned events, ``(events, keep_order, last_chunk_of_batch)``, or DONE (no more batches);
their payload starts with a tag byte: marshalled (plans are plain tuples, lists, strings and
numbers, and both ends run the same interpreter) or pickled for a value marshal refuses. Answers
(child to parent) are one pickled ``(results, commits)`` per batch, in the order the batches came.
Standard library only: the child imports this module.
"""

from __future__ import annotations

import marshal
import pickle
import struct
from collections.abc import Sequence
from typing import IO, Any

from app.ingest.apply import DatabaseUnavailable, IngestResult, PlannedEvent

Results = list[IngestResult | DatabaseUnavailable]
# Small chunks keep both sides moving: the child decodes one while the parent encodes the next.
CHUNK_EVENTS = 200
FRAME_HEADER = struct.Struct("!I")
MARSHALLED, PICKLED = b"m", b"p"
_DONE: Any = None


def _request_frame(value: Any) -> tuple[bytes, bytes]:
    """Header (with the tag) and payload, written one after the other: joining them would copy a
    megabyte per chunk once more."""
    try:
        tag, payload = MARSHALLED, marshal.dumps(value)
    except ValueError:
        tag, payload = PICKLED, pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return FRAME_HEADER.pack(len(payload) + len(tag)) + tag, payload


def encode_batch(events: Sequence[PlannedEvent], keep_order: bool) -> list[bytes]:
    """A batch as pieces to write in order: frames of at most CHUNK_EVENTS events, the last marked."""
    pieces: list[bytes] = []
    for start in range(0, max(len(events), 1), CHUNK_EVENTS):
        last = start + CHUNK_EVENTS >= len(events)
        # Plain tuples: marshal takes no tuple subclass (the child makes them PlannedEvents again).
        part = [tuple(planned) for planned in events[start : start + CHUNK_EVENTS]]
        pieces.extend(_request_frame((part, keep_order, last)))
    return pieces


DONE_FRAME = b"".join(_request_frame(_DONE))


def decode_request(payload: bytes) -> tuple[list[tuple[Any, ...]], bool, bool] | None:
    """A chunk ``(plain event tuples, keep_order, last)``, or None for DONE."""
    body = memoryview(payload)[1:]
    value = marshal.loads(body) if payload[:1] == MARSHALLED else pickle.loads(body)
    return value  # type: ignore[no-any-return]


def encode_answer(results: Results, commits: int) -> bytes:
    payload = pickle.dumps((results, commits), protocol=pickle.HIGHEST_PROTOCOL)
    return FRAME_HEADER.pack(len(payload)) + payload


def decode_answer(payload: bytes) -> tuple[Results, int]:
    """A batch's results, and how many transactions the child has committed so far."""
    results, commits = pickle.loads(payload)
    return results, commits


def _read_exactly(stream: IO[bytes], size: int) -> bytes:
    data = stream.read(size)
    if len(data) < size:
        raise EOFError
    return data


def read_payload(stream: IO[bytes]) -> bytes:
    """The payload of the next frame of a blocking stream; EOFError at its end or inside a frame."""
    (size,) = FRAME_HEADER.unpack(_read_exactly(stream, FRAME_HEADER.size))
    return _read_exactly(stream, size)


class FrameSplitter:
    """Payloads out of bytes as they arrive, for a reader that must not block (an event loop)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        payloads: list[bytes] = []
        header = FRAME_HEADER.size
        while len(self._buffer) >= header:
            (size,) = FRAME_HEADER.unpack_from(self._buffer)
            if len(self._buffer) < header + size:
                break
            payloads.append(bytes(self._buffer[header : header + size]))
            del self._buffer[: header + size]
        return payloads
