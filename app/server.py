"""The HTTP server around the application (``billing-mirror serve``): uvicorn, guarded against idle and
slow clients, with worker processes that end with their supervisor.

uvicorn closes a kept-alive connection that stays silent between requests (``timeout_keep_alive``) and
nothing else: a client that connects and never completes its request head, or stops in the middle of
its body, holds a socket, and so a file descriptor, for ever; a few thousand of them and every real
delivery fails. ``GuardedHttpProtocol`` (uvicorn's httptools protocol, passed as ``http=``) gives each
connection one deadline at a time, from the phase its request is in:

- waiting for a request head (since the connection was made, or since the previous response ended):
  closed after the header timeout;
- waiting for the rest of a body (since its head arrived): answered 408 and closed after the body
  timeout;
- the application has the request: no deadline (the database's own time limits apply).

A request head larger than MAX_HEAD_BYTES is answered 431 and closed.
Each server process holds at most ``max_connections``: beyond it a new connection takes the place of
the one that has waited longest for a request head (idle ones go first), or, when every connection
is busy with a request, is answered 503 and closed. Closings and refusals are logged as warnings, at
most one line per kind every THROTTLED_LOG_SECONDS (app.webhook.logs). Nothing happens at import.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from enum import Enum
from http import HTTPStatus
from typing import Any

from starlette.applications import Starlette
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from app.main import create_app
from app.settings import DEFAULT_SERVE_LOG_LEVEL, Settings
from app.webhook.logs import WEBHOOK_PATH, ThrottledWarning, configure_logging, logging_config
from app.webhook.metrics import MULTIPROCESS_DIR, multiprocess_mode, serve_metrics_port

logger = logging.getLogger("billing_mirror.server")

# httptools sets no limit on a request head: without one, a head that never ends grows in memory
# until the header timeout (h11, uvicorn's other parser, stops at 16 KiB).
MAX_HEAD_BYTES = 64 * 1024
# File descriptors a server process needs besides its connections: database connections, the writer
# child's pipes, the listening socket, the event loop, logs.
RESERVED_FILES = 64
# When the supervisor cannot be watched by the kernel (not Linux): how often a thread looks for it.
SUPERVISOR_POLL_SECONDS = 1.0
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


# ---- limits and what the connections of one server share --------------------------------------


def open_file_limit() -> int | None:
    """This process's soft limit on open files, or None where there is none to read (Windows)."""
    try:
        import resource
    except ImportError:
        return None
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def raise_open_file_limit() -> int | None:
    """Raise the soft limit on open files to the hard one; returns the soft limit now in force.
    Every connection holds a descriptor, and the soft limit is often 1024 where the hard one is far
    higher; worker processes inherit the raised limit."""
    try:
        import resource
    except ImportError:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:  # a platform that caps it lower (macOS): keep the soft one
            logger.warning("could not raise the open file limit from %d to %d: %s", soft, hard, exc)
    return open_file_limit()


@dataclass(frozen=True)
class ConnectionLimits:
    """Seconds for a whole request head, seconds for a whole body after its head, connections per
    server process."""

    header_timeout: float
    body_timeout: float
    max_connections: int

    @classmethod
    def from_settings(cls, settings: Settings, open_files: int | None) -> ConnectionLimits:
        """The configured limits; fewer connections than configured when the open file limit could
        not hold them, since a connection refused with 503 beats an accept() that fails unseen."""
        allowed = settings.max_connections
        if open_files is not None and allowed > open_files - RESERVED_FILES:
            allowed = max(1, open_files - RESERVED_FILES)
            logger.warning(
                "BILLING_MIRROR_MAX_CONNECTIONS=%d does not fit the open file limit (%d): holding at most "
                "%d connections per process",
                settings.max_connections,
                open_files,
                allowed,
            )
        return cls(settings.header_timeout_seconds, settings.body_timeout_seconds, allowed)


def _error_answer(status: HTTPStatus, error_type: str, message: str, *headers: str) -> bytes:
    """A whole HTTP response with Stripe's error object, written by the protocol itself (the
    application does not have the request, or has lost it), after which the connection closes."""
    body = json.dumps({"error": {"type": error_type, "message": message}}).encode()
    head = [
        f"HTTP/1.1 {status.value} {status.phrase}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
        *headers,
    ]
    return "\r\n".join([*head, "", ""]).encode("latin-1") + body


class ConnectionGuard:
    """What the connections of one server share: the limits, how many connections are open, those
    waiting for a request head (oldest first: the first to go when a new connection needs room),
    the answers written without the application and the warnings."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.open = 0
        self.waiting_for_head: dict[GuardedHttpProtocol, None] = {}  # ordered: oldest first
        self.request_timeout = _error_answer(
            HTTPStatus.REQUEST_TIMEOUT,
            "invalid_request_error",
            f"The request body did not arrive within {limits.body_timeout:g} seconds of its head.",
        )
        self.head_too_large = _error_answer(
            HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
            "invalid_request_error",
            f"The request line and headers exceed {MAX_HEAD_BYTES} bytes.",
        )
        self.busy = _error_answer(
            HTTPStatus.SERVICE_UNAVAILABLE,
            "server_busy",
            f"All {limits.max_connections} connections of this server are busy; retry later.",
            "retry-after: 5",
        )
        self.head_timeouts = ThrottledWarning(
            logger,
            f"closed %d connection(s) that sent no complete request head within {limits.header_timeout:g}s"
            " (BILLING_MIRROR_HEADER_TIMEOUT)",
        )
        self.body_timeouts = ThrottledWarning(
            logger,
            f"answered 408 to %d request(s) whose body did not arrive within {limits.body_timeout:g}s"
            " (BILLING_MIRROR_BODY_TIMEOUT)",
        )
        self.large_heads = ThrottledWarning(
            logger, f"answered 431 to %d request(s) whose head exceeded {MAX_HEAD_BYTES} bytes"
        )
        self.evictions = ThrottledWarning(
            logger,
            f"closed %d connection(s) waiting for a request head to make room for new ones: this process"
            f" holds at most {limits.max_connections} (BILLING_MIRROR_MAX_CONNECTIONS)",
        )
        self.refusals = ThrottledWarning(
            logger,
            f"answered 503 to %d new connection(s): all {limits.max_connections} connections of this"
            " process are busy with requests (BILLING_MIRROR_MAX_CONNECTIONS)",
        )

    def admit(self, connection: GuardedHttpProtocol) -> bool:
        """Count a new connection in, making room if it must; False if it had to be refused."""
        if self.open >= self.limits.max_connections:
            oldest = next(iter(self.waiting_for_head), None)
            if oldest is None:
                return False
            oldest.close_to_make_room()
        self.open += 1
        return True

    def release(self) -> None:
        self.open -= 1


# One guard per running server (uvicorn's ServerState is what its connections share).
_GUARDS: weakref.WeakKeyDictionary[ServerState, ConnectionGuard] = weakref.WeakKeyDictionary()


# ---- the protocol ----------------------------------------------------------------------------


class Phase(Enum):
    HEAD = "waiting for a request head"
    BODY = "waiting for the rest of a request body"
    APPLICATION = "the application has the request"


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a deadline for each request head and body and a limit on
    connections. The phase is read from uvicorn's own request cycle after everything that can change
    it (data in, a response out), so the parser and the cycle stay uvicorn's."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        guard = _GUARDS.get(server_state)
        if guard is None:
            guard = _GUARDS[server_state] = ConnectionGuard(self.limits())
        self.guard = guard
        self.phase: Phase | None = None
        self.deadline: asyncio.TimerHandle | None = None
        self.head_bytes = 0  # received since the connection started waiting for a head
        self.counted = False
        self.handed_over = False  # to uvicorn's WebSocket protocol, which owns the transport now

    @classmethod
    def limits(cls) -> ConnectionLimits:
        """Read once per server, where it serves: worker processes have their settings in the
        environment (``serve`` puts them there)."""
        return ConnectionLimits.from_settings(Settings.from_env(), open_file_limit())

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self.guard.admit(self):
            self.guard.refusals.happened(self.loop)
            transport.write(self.guard.busy)
            transport.close()
            return
        self.counted = True
        self._follow()

    def data_received(self, data: bytes) -> None:
        if self.phase is Phase.HEAD:
            self.head_bytes += len(data)
        super().data_received(data)
        self._follow()
        if self.phase is Phase.HEAD and self.head_bytes > MAX_HEAD_BYTES:
            self.guard.large_heads.happened(self.loop)
            self._enter(None)
            self.transport.write(self.guard.head_too_large)
            self.transport.close()

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        cycle = self.cycle
        delivery = self.scope["method"] == "POST" and self.scope["path"] == WEBHOOK_PATH
        if cycle is not None and cycle.access_log and delivery:
            # A delivery has its own line (app.webhook.endpoint): no access line, not even built.
            cycle.access_log = False

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow()

    def connection_lost(self, exc: Exception | None) -> None:
        self._enter(None)
        self._release()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        # This protocol hears nothing more of the connection (not even its end): let it go now.
        self.handed_over = True
        self._enter(None)
        self._release()
        super().handle_websocket_upgrade()

    def _follow(self) -> None:
        """Take the deadline of the phase uvicorn's request cycle is in now."""
        if self.handed_over:
            return
        if self.transport.is_closing():
            self._enter(None)
            return
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            phase = Phase.HEAD
        elif cycle.more_body:
            phase = Phase.BODY
        else:
            phase = Phase.APPLICATION
        if phase is not self.phase:
            self._enter(phase)

    def _enter(self, phase: Phase | None) -> None:
        """Leave the current phase (its deadline, its place in the queue of idle connections) for
        ``phase`` (None: the connection is closing)."""
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        if self.phase is Phase.HEAD:
            self.guard.waiting_for_head.pop(self, None)
        self.phase = phase
        limits = self.guard.limits
        if phase is Phase.HEAD:
            self.head_bytes = 0
            self.guard.waiting_for_head[self] = None
            self.deadline = self.loop.call_later(limits.header_timeout, self._head_too_slow)
        elif phase is Phase.BODY:
            self.deadline = self.loop.call_later(limits.body_timeout, self._body_too_slow)

    def _release(self) -> None:
        if self.counted:
            self.counted = False
            self.guard.release()

    def _head_too_slow(self) -> None:
        self.deadline = None
        self.guard.head_timeouts.happened(self.loop)
        self._enter(None)
        self.transport.close()

    def _body_too_slow(self) -> None:
        self.deadline = None
        self.guard.body_timeouts.happened(self.loop)
        self._enter(None)
        cycle = self.cycle
        if not cycle.response_started:
            # The 408 is the answer: whatever the application still sends goes nowhere, and what it
            # receives next is a disconnect.
            cycle.disconnected = True
            cycle.message_event.set()
            self.transport.write(self.guard.request_timeout)
        self.transport.close()

    def close_to_make_room(self) -> None:
        """Closed for a new connection while waiting for a request head (it no longer counts)."""
        self.guard.evictions.happened(self.loop)
        self._enter(None)
        self._release()
        self.transport.close()


# ---- worker processes end with their supervisor -------------------------------------------------


def _stop() -> None:
    """uvicorn's graceful stop: no new connections, the requests in flight answered, the writer child
    told to finish."""
    os.kill(os.getpid(), signal.SIGTERM)


def _kernel_signals_when_parent_dies() -> bool:
    """Linux: have the kernel send SIGTERM when the parent ends, even killed with SIGKILL. (It fires
    when the parent's thread that started this process ends: uvicorn starts workers on its main one.)"""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def stop_when_orphaned(parent_pid: int, every: float = SUPERVISOR_POLL_SECONDS) -> None:
    """Wait until this process is no longer ``parent_pid``'s child, then stop it: the portable way,
    on a thread of its own, where the kernel cannot be asked."""
    while os.getppid() == parent_pid:
        time.sleep(every)
    _stop()


def end_with_supervisor() -> None:
    """In a worker of uvicorn's supervisor (``serve --workers N``): stop gracefully when the
    supervisor ends, however it ends, instead of serving on as an orphan that keeps the port."""
    supervisor = multiprocessing.parent_process()
    if supervisor is None or supervisor.pid is None:
        return  # not a spawned worker: `serve` with one process
    if not _kernel_signals_when_parent_dies():
        watcher = threading.Thread(
            target=stop_when_orphaned, args=(supervisor.pid,), name="billing-mirror-supervisor", daemon=True
        )
        watcher.start()
    if os.getppid() != supervisor.pid:  # it ended before the kernel was asked
        _stop()


def create_served_app() -> Starlette:
    """The application factory ``serve`` gives uvicorn: called in each process that serves."""
    end_with_supervisor()
    return create_app()


def prepare_metrics_directory(workers: int) -> str | None:
    """With several server processes, prometheus-client's multi-process mode: each process writes its
    counts to files in PROMETHEUS_MULTIPROC_DIR (set before the workers start, so they inherit it) and
    a scrape sums them. The directory is the one given, emptied, or a fresh one; returns the fresh one
    (to remove at the end), or None."""
    import tempfile
    from pathlib import Path

    given = os.environ.get(MULTIPROCESS_DIR)
    if given:
        for stale in Path(given).glob("*.db"):  # counts of an earlier run would be summed in
            stale.unlink()
        return None
    if workers <= 1:
        return None
    fresh = tempfile.mkdtemp(prefix="billing-mirror-metrics-")
    os.environ[MULTIPROCESS_DIR] = fresh
    return fresh


def run_server(settings: Settings, *, host: str, port: int, workers: int) -> None:
    """uvicorn with the guarded protocol. Worker processes build their application and limits from
    the environment, where ``serve`` has put ``settings``; uvicorn sets up their logs
    (app.webhook.logs: billing-mirror's lines and uvicorn's, access log included, in one format and
    level)."""
    import shutil

    import uvicorn

    level = settings.log_level or DEFAULT_SERVE_LOG_LEVEL
    configure_logging(level, settings.log_format)
    logger.info("billing-mirror listening on http://%s:%d/webhooks/stripe", host, port)
    raise_open_file_limit()
    fresh = prepare_metrics_directory(workers)
    stop_metrics_port = None
    if settings.metrics_port and multiprocess_mode():
        # The supervisor serves the metrics port: the sums of every worker's files, and the database's
        # gauges. (With one process, the application serves it itself.)
        from app.db.engine import make_engine

        engine = make_engine(settings.database_url, for_writing=False)
        stop_metrics_port = serve_metrics_port(settings.metrics_port, None, engine)
    try:
        uvicorn.run(
            "app.server:create_served_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            http=GuardedHttpProtocol,
            timeout_keep_alive=settings.keep_alive_seconds,
            log_config=logging_config(level, settings.log_format, buffered=True, shared=workers > 1),
            log_level=level,
            access_log=True,
        )
    finally:
        if stop_metrics_port is not None:
            stop_metrics_port()
            engine.dispose()
        if fresh is not None:
            shutil.rmtree(fresh, ignore_errors=True)
