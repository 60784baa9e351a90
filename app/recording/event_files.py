"""Read recorded events from files, streaming: JSONL, single event files, directories and list envelopes.

Every input is treated as a sequence of JSON values separated by whitespace, read through a bounded
buffer (a line that holds exactly one value is decoded by orjson, anything else with
``json.JSONDecoder.raw_decode``, which also gives where the value ends):

- a JSONL file is one value per line; each event keeps its exact text (the line without its line end);
- a ``*.json`` file holding one event (pretty-printed or not) keeps the file's exact text;
- ``{"object": "list", "data": [...]}`` (Stripe's CLI, ``GET /v1/events``) is recognised by its
  ``data`` array; elements are decoded one at a time, so a list of millions of events needs no more
  memory than one of them, and each is re-serialized as compact JSON (its original bytes are gone);
- a top-level ``[...]`` array of events is read the same way;
- a directory is read file by file (``*.json``, ``*.jsonl``, ``*.ndjson``, sorted by path, recursively).

A value that is not valid JSON is reported and the reader resumes on the next line.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from app.json_text import json_text

EVENT_FILE_SUFFIXES = (".json", ".jsonl", ".ndjson")
CHUNK_CHARS = 1 << 20
# A value larger than this is streamed member by member instead of decoded in one go.
WHOLE_VALUE_LIMIT = 2 << 20
# No single event (or list element) may be larger; Stripe's are a few kilobytes.
MAX_VALUE_CHARS = 64 << 20

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class SourceValue:
    """One candidate event: its decoded JSON and the text to store and sign."""

    body: Any
    raw: str
    origin: str  # "path:line" for messages
    exact: bool  # raw is the exact text found in the file (False: re-serialized list element)


@dataclass(frozen=True)
class SourceProblem:
    """Something in the input that is not JSON at all; reported, then skipped."""

    origin: str
    reason: str


SourceItem = SourceValue | SourceProblem


class _Incomplete(Exception):
    """The value does not end within the allowed buffer."""


class _Buffer:
    """A sliding window over a text stream: decode JSON values in place, never the whole file."""

    def __init__(self, stream: IO[str], name: str, chunk: int = CHUNK_CHARS) -> None:
        self.stream = stream
        self.name = name
        self.chunk = chunk
        self.text = ""
        self.pos = 0
        self.dropped = 0  # characters discarded before text[0]
        self.eof = False
        self.line = 1  # line number at self.pos
        self._line_counted_to = 0

    def origin(self) -> str:
        self._count_lines()
        return f"{self.name}:{self.line}"

    def _count_lines(self) -> None:
        if self.pos > self._line_counted_to:
            self.line += self.text.count("\n", self._line_counted_to, self.pos)
            self._line_counted_to = self.pos

    def fill(self, ahead: int) -> None:
        """Make at least ``ahead`` characters available after ``pos`` unless the stream ends."""
        if self.pos and self.pos >= len(self.text) // 2:
            self._count_lines()
            self.text = self.text[self.pos :]
            self._line_counted_to -= self.pos
            self.dropped += self.pos
            self.pos = 0
        pieces = [self.text]
        available = len(self.text) - self.pos
        while not self.eof and available < ahead:
            data = self.stream.read(max(self.chunk, ahead - available))
            if not data:
                self.eof = True
                break
            pieces.append(data)
            available += len(data)
        if len(pieces) > 1:
            self.text = "".join(pieces)

    def skip_whitespace(self) -> str | None:
        """Skip whitespace; return the next character (None at the end of the stream)."""
        while True:
            match = _WHITESPACE.match(self.text, self.pos)
            self.pos = match.end() if match else self.pos
            if self.pos < len(self.text):
                return self.text[self.pos]
            if self.eof:
                return None
            self.fill(self.chunk)

    def expect(self, char: str) -> None:
        if self.skip_whitespace() != char:
            raise json.JSONDecodeError(f"Expecting {char!r}", self.text, self.pos)
        self.pos += 1

    def decode(self, limit: int = MAX_VALUE_CHARS) -> tuple[Any, str]:
        """Decode the value at ``pos``: (value, its exact text). Grows the window up to ``limit``."""
        while True:
            if self.pos < len(self.text):
                try:
                    value, end = _DECODER.raw_decode(self.text, self.pos)
                    # A number cut by the window edge would decode as a shorter number.
                    if end < len(self.text) or self.eof:
                        raw = self.text[self.pos : end]
                        self.pos = end
                        return value, raw
                except json.JSONDecodeError:
                    if self.eof:
                        raise
            elif self.eof:
                raise json.JSONDecodeError("Expecting value", self.text, self.pos)
            available = len(self.text) - self.pos
            if available >= limit:
                raise _Incomplete
            self.fill(min(limit, max(self.chunk, available * 2)))

    def skip_line(self) -> None:
        """Resynchronise after invalid JSON: continue after the next line end."""
        while True:
            newline = self.text.find("\n", self.pos)
            if newline >= 0:
                self.pos = newline + 1
                return
            self._count_lines()
            self.pos = len(self.text)
            if self.eof:
                return
            self.fill(self.chunk)


def _whole_line(buffer: _Buffer) -> tuple[Any, str] | None:
    """The JSONL fast path: the rest of the line at ``pos`` as one JSON value, decoded by orjson.

    None when the line is not exactly one value orjson accepts (a pretty-printed file, two values
    on a line, NaN, integers beyond 64 bits...): the caller then uses the general decoder.
    """
    end = buffer.text.find("\n", buffer.pos)
    if end < 0:
        if not buffer.eof:
            buffer.fill(buffer.chunk)
            end = buffer.text.find("\n", buffer.pos)
        if end < 0:
            end = len(buffer.text) if buffer.eof else -1
    if end < 0:
        return None
    raw = buffer.text[buffer.pos : end].rstrip(" \t\r")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    buffer.pos += len(raw)
    return value, raw


def _is_list_envelope(value: Any) -> bool:
    # An event's "data" is an object; a list's "data" is an array.
    return isinstance(value, dict) and isinstance(value.get("data"), list)


def _list_elements(elements: Iterable[Any], origin: str) -> Iterator[SourceValue]:
    for index, element in enumerate(elements):
        yield SourceValue(element, json_text(element), f"{origin} data[{index}]", exact=False)


def _stream_array(buffer: _Buffer, origin: str) -> Iterator[SourceValue]:
    """The array at ``pos``, element by element."""
    buffer.expect("[")
    index = 0
    if buffer.skip_whitespace() == "]":
        buffer.pos += 1
        return
    while True:
        buffer.skip_whitespace()
        value, _ = buffer.decode()
        yield SourceValue(value, json_text(value), f"{origin} [{index}]", exact=False)
        index += 1
        following = buffer.skip_whitespace()
        buffer.pos += 1
        if following == "]":
            return
        if following != ",":
            raise json.JSONDecodeError("Expecting ',' or ']'", buffer.text, buffer.pos - 1)


def _stream_object(buffer: _Buffer, origin: str) -> Iterator[SourceValue]:
    """A top-level object too large to decode at once: member by member, streaming a ``data`` array."""
    buffer.expect("{")
    members: dict[str, Any] = {}
    streamed = False
    if buffer.skip_whitespace() == "}":
        buffer.pos += 1
    else:
        while True:
            buffer.skip_whitespace()
            key, _ = buffer.decode()
            buffer.expect(":")
            following_value = buffer.skip_whitespace()
            if key == "data" and following_value == "[":
                yield from _stream_array(buffer, f"{origin} data")
                streamed = True
            else:
                members[key], _ = buffer.decode()
            following = buffer.skip_whitespace()
            buffer.pos += 1
            if following == "}":
                break
            if following != ",":
                raise json.JSONDecodeError("Expecting ',' or '}'", buffer.text, buffer.pos - 1)
    if not streamed:  # one (oversized) object, not a list
        yield SourceValue(members, json_text(members), origin, exact=False)


def iter_stream(stream: IO[str], name: str, chunk: int = CHUNK_CHARS) -> Iterator[SourceItem]:
    """Every candidate event in a text stream, in order."""
    buffer = _Buffer(stream, name, chunk)
    while True:
        first = buffer.skip_whitespace()
        if first is None:
            return
        origin = buffer.origin()
        start = buffer.dropped + buffer.pos  # absolute: the window may slide meanwhile
        try:
            if first == "[":
                yield from _stream_array(buffer, origin)
                continue
            if first == "{":
                line_value = _whole_line(buffer)
                if line_value is not None:
                    value, raw = line_value
                    if _is_list_envelope(value):
                        yield from _list_elements(value["data"], origin)
                    else:
                        yield SourceValue(value, raw, origin, exact=True)
                    continue
            try:
                limit = max(chunk, WHOLE_VALUE_LIMIT) if first == "{" else MAX_VALUE_CHARS
                value, raw = buffer.decode(limit)
            except _Incomplete:
                buffer.pos = start - buffer.dropped
                yield from _stream_object(buffer, origin)
                continue
            if _is_list_envelope(value):
                yield from _list_elements(value["data"], origin)
            else:
                yield SourceValue(value, raw, origin, exact=True)
        except (json.JSONDecodeError, _Incomplete) as exc:
            reason = "value too large" if isinstance(exc, _Incomplete) else f"invalid JSON: {exc.msg}"
            yield SourceProblem(origin, reason)
            # Resume on the line after the bad value's start, or after the point the error was found.
            buffer.pos = max(buffer.pos, start - buffer.dropped)
            buffer.skip_line()


def iter_files(path: Path) -> Iterator[Path]:
    if path.is_dir():
        yield from sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in EVENT_FILE_SUFFIXES)
    else:
        yield path


class ReadProgress:
    """Bytes read so far out of the total size of the named files (stdin counts as unknown).

    ``done_bytes`` is worked out when asked (a progress bar asks a few times a second): asking the
    open file where it is costs a system call, too much to pay for every event read."""

    def __init__(self) -> None:
        self.total_bytes = 0
        self._finished_bytes = 0  # the files read to their end
        self._current: IO[bytes] | None = None

    @property
    def done_bytes(self) -> int:
        current = self._current
        if current is None or current.closed:
            return self._finished_bytes
        return self._finished_bytes + current.tell()

    def reading(self, binary: IO[bytes]) -> None:
        self._current = binary

    def finished(self, size: int) -> None:
        self._current = None
        self._finished_bytes += size


def iter_sources(
    paths: Iterable[str], progress: ReadProgress | None = None, chunk: int = CHUNK_CHARS
) -> Iterator[SourceItem]:
    """Candidate events from every path in order; ``-`` reads standard input."""
    import sys

    resolved: list[str | Path] = []
    for name in paths:
        if name == "-":
            resolved.append(name)
            continue
        path = Path(name)
        if not path.exists():
            yield SourceProblem(name, "no such file or directory")
            continue
        resolved.extend(iter_files(path))
    if progress is not None:
        progress.total_bytes = sum(p.stat().st_size for p in resolved if isinstance(p, Path))
    for item in resolved:
        if isinstance(item, str):
            stdin = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8-sig", newline="")
            yield from iter_stream(stdin, "<stdin>", chunk)
            continue
        with item.open("rb") as binary:
            if progress is not None:
                progress.reading(binary)
            # newline="" keeps \r\n and lone \r exactly as recorded.
            text = io.TextIOWrapper(binary, encoding="utf-8-sig", newline="")
            try:
                yield from iter_stream(text, str(item), chunk)
            except UnicodeDecodeError as exc:
                reason = f"not UTF-8 text ({exc.reason}); the rest of the file is skipped"
                yield SourceProblem(str(item), reason)
            if progress is not None:
                progress.finished(item.stat().st_size)
