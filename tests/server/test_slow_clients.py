"""Idle and slow clients against a real ``billing-mirror serve`` over sockets on 127.0.0.1: they are
closed on time, they never hold more than the connection limit, and real deliveries keep being
answered meanwhile."""

from __future__ import annotations

import json
import os
import select
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.support import LiveServer, encode, load_fixture, signed_headers

pytestmark = pytest.mark.slow

HEAD = b"POST /webhooks/stripe HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"


@pytest.fixture
def start_server(sqlite_file: Path) -> Iterator[Callable[..., LiveServer]]:
    """``serve`` on a SQLite file, with these settings (and limits on open files)."""
    started: list[LiveServer] = []

    def start(extra_env: dict[str, str], open_files: tuple[int, int] | None = None) -> LiveServer:
        server = LiveServer(f"sqlite:///{sqlite_file}", extra_env=extra_env, open_files=open_files)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.process.poll() is None:
            server.stop()


def logged(server: LiveServer) -> str:
    """What the server wrote, once it has stopped."""
    server.stop()
    assert server.process.stdout is not None
    return server.process.stdout.read().decode()


def deliver(url: str) -> tuple[int, float]:
    """A signed delivery on a new connection: (status, seconds it took)."""
    body = encode(load_fixture("invoiceitem.created.json"))
    started = time.monotonic()
    response = httpx.post(
        f"{url}/webhooks/stripe", content=body, headers=signed_headers(body, int(time.time())), timeout=10
    )
    return response.status_code, time.monotonic() - started


def healthz(url: str) -> tuple[int, float]:
    started = time.monotonic()
    response = httpx.get(f"{url}/healthz", timeout=10)
    return response.status_code, time.monotonic() - started


def status_or_error(url: str) -> int | str:
    """GET /healthz: the status, or the error of a connection closed without an answer."""
    try:
        return httpx.get(f"{url}/healthz", timeout=10).status_code
    except httpx.HTTPError as exc:
        return type(exc).__name__


def connect(port: int, sent: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    if sent:
        sock.sendall(sent)
    return sock


Closings = dict[socket.socket, tuple[float, bytes]]


def wait_closed(sockets: list[socket.socket], timeout: float) -> Closings:
    """Read every socket until the server closes it: when (monotonic) and what it sent before."""
    received = {sock: b"" for sock in sockets}
    closed: Closings = {}
    deadline = time.monotonic() + timeout
    while len(closed) < len(sockets):
        pending = [sock for sock in sockets if sock not in closed]
        readable, _, _ = select.select(pending, [], [], 0.02)
        for sock in readable:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if data:
                received[sock] += data
            else:
                closed[sock] = (time.monotonic(), received[sock])
        if time.monotonic() >= deadline:
            break
    return closed


def watch_closings(sockets: list[socket.socket], timeout: float) -> Future[Closings]:
    """``wait_closed`` on a thread, so that closings are timed while the test does something else."""
    executor = ThreadPoolExecutor(max_workers=1)
    closings = executor.submit(wait_closed, sockets, timeout)
    executor.shutdown(wait=False)
    return closings


def trickle(sock: socket.socket, data: bytes, every: float) -> None:
    """Send ``data`` a byte at a time, until it is sent or the server closed the connection."""
    for byte in data:
        try:
            sock.send(bytes([byte]))
        except OSError:
            return
        time.sleep(every)


def close_all(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


def test_idle_half_sent_and_stalled_requests_are_closed_on_time_and_deliveries_answered(
    start_server: Callable[..., LiveServer],
) -> None:
    server = start_server(
        extra_env={
            "BILLING_MIRROR_HEADER_TIMEOUT": "1",
            "BILLING_MIRROR_BODY_TIMEOUT": "2",
            "BILLING_MIRROR_MAX_CONNECTIONS": "50",
        }
    )
    opened = time.monotonic()
    silent = [connect(server.port) for _ in range(15)]
    half_line = [connect(server.port, b"POST /webhooks/str") for _ in range(10)]
    half_head = [connect(server.port, HEAD + b"Content-Le") for _ in range(10)]
    stalled = [
        connect(server.port, HEAD + b"Content-Length: 500\r\n\r\n" + b'{"id": "evt_') for _ in range(5)
    ]
    trickling = connect(server.port, b"P")  # busy, but never a whole head: the deadline still holds
    heads = silent + half_line + half_head + [trickling]
    closings = watch_closings(heads + stalled, timeout=8)

    assert deliver(server.url)[0] == 200 and healthz(server.url)[0] == 200
    timings = [deliver(server.url)[1] for _ in range(5)]
    assert max(timings) < 1.0, timings
    trickle(trickling, b"OST /webhooks/stripe HTTP/1.1\r\nHost: 127.0.0.1\r\n", every=0.05)

    closed = closings.result()
    assert len(closed) == len(heads) + len(stalled)
    for sock in heads:
        at, answer = closed[sock]
        assert 0.9 < at - opened < 2.5 and answer == b""
    for sock in stalled:
        at, answer = closed[sock]
        assert 1.9 < at - opened < 3.5
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 ")
        error = json.loads(body)["error"]
        assert error["type"] == "invalid_request_error" and "2 seconds" in error["message"]
    close_all(heads + stalled)
    assert healthz(server.url)[0] == 200

    output = logged(server)
    assert "closed 1 connection(s) that sent no complete request head within 1s" in output
    assert "answered 408 to 1 request(s) whose body did not arrive within 2s" in output
    assert len(output.splitlines()) < 12  # one line, then one per interval: a flood does not flood the log


def test_a_kept_alive_connection_is_closed_when_silent_or_trickling_after_a_response(
    start_server: Callable[..., LiveServer],
) -> None:
    server = start_server(extra_env={"BILLING_MIRROR_HEADER_TIMEOUT": "2", "BILLING_MIRROR_KEEP_ALIVE": "1"})
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    silent, trickling = connect(server.port, request), connect(server.port, request)
    for sock in (silent, trickling):
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
    answered = time.monotonic()
    closings = watch_closings([silent, trickling], timeout=5)
    trickle(trickling, request[:-2], every=0.15)  # a byte every 0.15 s keeps the keep-alive timeout at bay
    closed = closings.result()
    assert 0.9 < closed[silent][0] - answered < 1.8  # uvicorn's keep-alive timeout
    assert 1.9 < closed[trickling][0] - answered < 3.0  # the header timeout, from the end of the response
    close_all([silent, trickling])


def test_twice_the_connection_limit_in_idle_sockets_does_not_stop_a_delivery(
    start_server: Callable[..., LiveServer],
) -> None:
    """More idle sockets than the server has file descriptors: before the limit, every later
    connection failed (accept() could not get a descriptor) and nothing was logged."""
    limit, files = 60, 128
    server = start_server(
        extra_env={"BILLING_MIRROR_MAX_CONNECTIONS": str(limit), "BILLING_MIRROR_HEADER_TIMEOUT": "30"},
        open_files=(files, files),
    )
    idle = [connect(server.port) for _ in range(2 * limit)]
    status, took = deliver(server.url)
    assert status == 200 and took < 3.0, took
    assert healthz(server.url)[0] == 200
    held = len(os.listdir(f"/proc/{server.process.pid}/fd"))
    assert held < files
    # The oldest idle sockets made room for the newer ones (and for the delivery), at once.
    closed = sorted(idle.index(sock) for sock in wait_closed(idle, timeout=1.0))
    assert closed == list(range(len(closed))) and len(closed) >= limit
    close_all(idle)

    output = logged(server)
    assert "to make room for new ones: this process holds at most 60" in output
    assert len(output.splitlines()) < 12


def test_when_every_connection_is_busy_with_a_request_a_new_one_is_answered_503(
    start_server: Callable[..., LiveServer],
) -> None:
    server = start_server(extra_env={"BILLING_MIRROR_MAX_CONNECTIONS": "20"})
    stalled = [connect(server.port, HEAD + b"Content-Length: 500\r\n\r\n{") for _ in range(20)]
    time.sleep(0.3)  # every head read: none of them waits for a head, none can make room
    refused = connect(server.port)
    closed = wait_closed([refused], timeout=2)
    head, _, body = closed[refused][1].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 ") and b"retry-after: 5" in head
    assert json.loads(body)["error"]["type"] == "server_busy"
    refused.close()

    stalled.pop().close()  # a slot frees up as soon as the server sees the close
    deadline = time.monotonic() + 3
    while (status := status_or_error(server.url)) != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status == 200
    close_all(stalled)
    assert "answered 503 to 1 new connection(s): all 20 connections" in logged(server)


def test_a_request_head_that_never_ends_is_answered_431_before_it_fills_memory(
    start_server: Callable[..., LiveServer],
) -> None:
    server = start_server(extra_env={})
    endless = connect(server.port, b"GET /healthz HTTP/1.1\r\nX-Padding: " + b"a" * 70_000)
    closings = watch_closings([endless], timeout=5)
    head, _, body = closings.result()[endless][1].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 ")
    assert json.loads(body)["error"]["type"] == "invalid_request_error"
    endless.close()
    assert deliver(server.url)[0] == 200
    assert "answered 431 to 1 request(s) whose head exceeded 65536 bytes" in logged(server)


def test_websocket_upgrades_are_refused_and_leave_no_connection_counted(
    start_server: Callable[..., LiveServer],
) -> None:
    """uvicorn hands an upgrade to its WebSocket protocol (the application has no WebSocket route:
    403); the connection must stop counting toward the limit then."""
    server = start_server(extra_env={"BILLING_MIRROR_MAX_CONNECTIONS": "3"})
    upgrade = (
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    for _ in range(10):
        sock = connect(server.port, upgrade)
        closed = wait_closed([sock], timeout=5)
        assert closed[sock][1].startswith(b"HTTP/1.1 403 ")
        sock.close()
    stalled = [connect(server.port, HEAD + b"Content-Length: 500\r\n\r\n{") for _ in range(2)]
    assert status_or_error(server.url) == 200  # the third of three connections
    close_all(stalled)
    output = logged(server)
    assert "make room" not in output  # no upgraded connection was left counted, to be evicted
    # Nor did uvicorn warn about the upgrades (the only warning: the read API has no key here).
    warnings = [line for line in output.splitlines() if "WARNING" in line]
    assert [line for line in warnings if "read API is closed" not in line] == []
