"""Logs: the standard logging module, one handler on stderr for billing-mirror's and uvicorn's loggers,
lines as text or as JSON (one object a line, for a log pipeline).

The JSON formatter is these few lines rather than a library (python-json-logger would do): it needs the
record's time, level, logger, message and the fields given with ``extra=``, and nothing else.

Nothing here writes a secret, an API key or a payload: lines carry ids, types, outcomes and counts
(tests/webhook/test_logs.py checks it). Nothing happens at import: ``logging_config`` is a dict for
``logging.config.dictConfig`` (uvicorn applies it in each server process), ``configure_logging``
applies it here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import logging.config
import math
import os
import select
import threading
import time
from typing import Any

import orjson

WEBHOOK_PATH = "/webhooks/stripe"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# What every LogRecord has: the JSON line gives the rest (the ``extra=`` fields) as they are.
# (uvicorn's ``color_message`` is its message again, with terminal colours.)
_RECORD_ATTRIBUTES = frozenset(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}
# uvicorn's access lines: '%s - "%s %s HTTP/%s" %d' of (client, method, path, version, status).
_ACCESS_FIELDS = ("client", "method", "path", "http_version", "status")


# Flushed this often (and at once for warnings and errors, and at exit) by serve's handler.
FLUSH_SECONDS = 0.5
# Lines about floods (bad clients, an outage failing every delivery) at most this often (ThrottledWarning).
THROTTLED_LOG_SECONDS = 10.0
_BUFFER_BYTES = 64 * 1024
_ATOMIC_BYTES: int = getattr(select, "PIPE_BUF", 4096)  # a pipe writes this much in one piece


class _UtcSeconds:
    """The time of a record in UTC to the millisecond; the seconds part formatted once a second."""

    def __init__(self) -> None:
        self.second = -1
        self.text = ""

    def __call__(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self.second:
            self.second, self.text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self.text}.{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    """``2026-01-01T00:00:00.000Z INFO billing_mirror.webhook delivery evt_... type=...``, in UTC."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        self._time = _UtcSeconds()

    def format(self, record: logging.LogRecord) -> str:
        line = f"{self._time(record)} {record.levelname} {record.name} {record.getMessage()}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC), level, logger, message, then the record's ``extra=``
    fields (and an access line's client, method, path, status), then the exception, if any."""

    def __init__(self) -> None:
        super().__init__()
        self._time = _UtcSeconds()

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self._time(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in record.__dict__.items():
            if name not in _RECORD_ATTRIBUTES:
                line[name] = value
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            line.update(zip(_ACCESS_FIELDS, record.args, strict=True))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class NotWebhookDeliveries(logging.Filter):
    """Leaves out uvicorn's access line of a webhook delivery: the delivery has its own line, with more
    in it (event id, type, object, outcome, time to commit), and two lines would cost it twice."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        return not (isinstance(args, tuple) and len(args) == 5 and args[2] == WEBHOOK_PATH)


# The loggers of a line per request: their info lines wait in serve's buffer; every other line (start,
# stop, warnings) is written out at once.
BUFFERED_LOGGERS = frozenset({"billing_mirror.webhook", "uvicorn.access"})


class BufferedStderrHandler(logging.Handler):
    """stderr through a buffer: the info lines of BUFFERED_LOGGERS (a line per delivery, the access
    log) are written out every FLUSH_SECONDS by a thread (started with the first such line), when
    64 KiB wait, and when the application stops (``flush_logs``); every other line at once, with what
    waited before it. A line per delivery then costs no system call of its own; a process killed
    outright loses at most the last half second of those lines (uvicorn ends a process it stopped by
    raising the signal again, so no exit hook would run). With ``shared`` (the workers of ``serve
    --workers N`` share one stderr) lines go out in whole-line writes of at most PIPE_BUF bytes, which a
    pipe never interleaves with another process's, so no worker tears another's lines; otherwise in
    one write, since every write gives the GIL to the event loop and must wait to get it back."""

    def __init__(self, shared: bool = False) -> None:
        super().__init__()
        self.atomic = _ATOMIC_BYTES if shared else _BUFFER_BYTES * 4
        self.fd = os.dup(2)
        self.pending: list[bytes] = []
        self.size = 0
        self._flusher: threading.Thread | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = (self.format(record) + "\n").encode("utf-8", "replace")
            self.pending.append(line)
            self.size += len(line)
            urgent = record.levelno >= logging.WARNING or record.name not in BUFFERED_LOGGERS
            if urgent or self.size >= _BUFFER_BYTES:
                self._write_out()
            elif self._flusher is None:
                self._flusher = threading.Thread(
                    target=self._flush_often, name="billing-mirror-logs", daemon=True
                )
                self._flusher.start()
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write_out()

    def _write_out(self) -> None:
        """Under the lock: every pending line, in writes of whole lines of at most PIPE_BUF bytes."""
        chunk: list[bytes] = []
        size = 0
        for line in self.pending:
            if chunk and size + len(line) > self.atomic:
                self._write(b"".join(chunk))
                chunk, size = [], 0
            chunk.append(line)
            size += len(line)
        if chunk:
            self._write(b"".join(chunk))
        self.pending, self.size = [], 0

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def _flush_often(self) -> None:
        while True:
            time.sleep(FLUSH_SECONDS)
            try:
                self.flush()
            except OSError:  # stderr is gone: nothing left to write to
                return

    def close(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            with contextlib.suppress(OSError):
                self._write_out()
            fd, self.fd = self.fd, -1  # the flushing thread's next write fails, and it ends
            if fd >= 0:
                os.close(fd)
        super().close()


# What every record made by ``log_fast`` has besides its own values (as LogRecord's own __init__ would
# set them with caller, thread and process information switched off).
_STATIC_RECORD = {
    **logging.makeLogRecord({}).__dict__,
    "pathname": "",
    "filename": "",
    "module": "",
    "lineno": 0,
    "funcName": None,
    "thread": None,
    "threadName": None,
    "processName": None,
}


_LOGGING_STARTED: float = getattr(logging, "_startTime", time.time())


def log_fast(
    logger: logging.Logger, level: int, message: str, args: tuple[Any, ...], fields: dict[str, Any]
) -> None:
    """``logger.log(level, message, *args, extra=fields)`` for the line of every delivery, through the
    same loggers, filters and handlers, at a third of the cost: the record is filled in directly
    instead of by LogRecord's constructor (which looks up the caller's frame, thread and process)."""
    if not logger.isEnabledFor(level):
        return
    record = logging.LogRecord.__new__(logging.LogRecord)
    values = record.__dict__
    values.update(_STATIC_RECORD)
    now = time.time()
    values.update(fields)
    values["name"] = logger.name
    values["levelno"] = level
    values["levelname"] = logging.getLevelName(level)
    values["msg"] = message
    values["args"] = args
    values["created"] = now
    values["msecs"] = (now - int(now)) * 1000
    values["relativeCreated"] = (now - _LOGGING_STARTED) * 1000
    values["process"] = os.getpid()
    logger.handle(record)


def flush_logs() -> None:
    """Write out what serve's buffer holds (the application is stopping)."""
    for name in BUFFERED_LOGGERS:
        for handler in logging.getLogger(name).handlers:
            handler.flush()
    for handler in logging.getLogger("billing_mirror").handlers:
        handler.flush()


def logging_config(
    level: str, log_format: str, buffered: bool = False, shared: bool = False
) -> dict[str, Any]:
    """billing-mirror's loggers and uvicorn's (its errors and its access log) at ``level``, through
    one handler on stderr in ``log_format`` (text or json); ``buffered`` (serve): through
    BufferedStderrHandler. The root logger is left alone."""
    formatter = JsonFormatter if log_format == "json" else TextFormatter
    handler: dict[str, Any] = {"class": "logging.StreamHandler", "stream": "ext://sys.stderr"}
    if buffered:
        handler = {
            "()": f"{BufferedStderrHandler.__module__}.{BufferedStderrHandler.__qualname__}",
            "shared": shared,
        }
    upper = level.upper()

    def logger(**extra: Any) -> dict[str, Any]:
        return {"handlers": ["stderr"], "level": upper, "propagate": False, **extra}

    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"line": {"()": f"{formatter.__module__}.{formatter.__qualname__}"}},
        "filters": {
            "not_webhook": {"()": f"{NotWebhookDeliveries.__module__}.{NotWebhookDeliveries.__qualname__}"}
        },
        "handlers": {"stderr": {**handler, "formatter": "line"}},
        "loggers": {
            "billing_mirror": logger(),
            "uvicorn": logger(),
            "uvicorn.error": {"level": upper, "propagate": True},
            "uvicorn.access": logger(filters=["not_webhook"]),
        },
    }


def configure_logging(level: str, log_format: str) -> None:
    """Apply ``logging_config`` in this process (the commands other than ``serve``)."""
    logging.config.dictConfig(logging_config(level, log_format))


class ThrottledWarning:
    """A line logged at most once every ``every`` seconds, with how many times it happened since the
    previous line, so a flood (bad clients, an outage failing every delivery) cannot flood the log.
    ``message`` takes the details of the latest occurrence, then the count (%d)."""

    def __init__(
        self,
        logger: logging.Logger,
        message: str,
        every: float = THROTTLED_LOG_SECONDS,
        level: int = logging.WARNING,
    ) -> None:
        self.logger = logger
        self.message = message
        self.every = every
        self.level = level
        self.count = 0
        self.details: tuple[Any, ...] = ()
        self.logged_at = -math.inf
        self.flush: asyncio.TimerHandle | None = None

    def happened(self, loop: asyncio.AbstractEventLoop, *details: Any) -> None:
        self.count += 1
        self.details = details
        if loop.time() - self.logged_at >= self.every:
            self._log(loop)
        elif self.flush is None:  # the ones held back are reported when the interval ends
            self.flush = loop.call_at(self.logged_at + self.every, self._log, loop)

    def _log(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.flush is not None:
            self.flush.cancel()
            self.flush = None
        if self.count:
            self.logger.log(self.level, self.message, *self.details, self.count)
            self.count = 0
            self.logged_at = loop.time()
