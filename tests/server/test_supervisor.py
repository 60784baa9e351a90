"""Processes end with their parent: ``serve --workers N``'s workers with the supervisor, the SQLite
writer child with its worker; real processes, found through /proc."""

from __future__ import annotations

import os
import resource
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import PROJECT_ROOT, LiveServer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc"),
]


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat from the state on, or None once the process has ended (a zombie has ended too:
    only its exit status is left)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields


def parent_of(pid: int) -> int | None:
    fields = _stat(pid)
    return None if fields is None else int(fields[1])


def started_at(pid: int) -> str | None:
    """When the process started (clock ticks since boot): a pid reused later has another."""
    fields = _stat(pid)
    return None if fields is None else fields[19]


def children_of(pid: int) -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit() and parent_of(int(entry)) == pid]


def descendants_of(pid: int) -> dict[int, list[int]]:
    """Every child of ``pid`` with its own children."""
    return {child: children_of(child) for child in children_of(pid)}


def every_pid(tree: dict[int, list[int]]) -> list[int]:
    return [pid for child, grandchildren in tree.items() for pid in (child, *grandchildren)]


def writer_children(tree: dict[int, list[int]]) -> list[int]:
    return [
        pid
        for grandchildren in tree.values()
        for pid in grandchildren
        if b"app.ingest.sqlite_writer" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]


def wait_until_ended(pids: list[int], timeout: float) -> list[int]:
    """Those of ``pids`` still running after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while (running := [pid for pid in pids if parent_of(pid) is not None]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return running


def soft_open_file_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open file limit")


Started = tuple[LiveServer, dict[int, list[int]]]


@pytest.fixture
def start_with_workers(sqlite_file: Path) -> Iterator[Callable[[int], Started]]:
    """A server whose workers have each started their writer child, and its process tree; whatever
    is left of them is killed afterwards, so a failing test leaves no process behind."""
    started: list[tuple[LiveServer, dict[int, str | None]]] = []

    def start(workers: int) -> Started:
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        server = LiveServer(f"sqlite:///{sqlite_file}", workers=workers, open_files=(min(256, hard), hard))
        tree: dict[int, list[int]] = {}
        deadline = time.monotonic() + 30
        while len(writer_children(tree)) < workers and time.monotonic() < deadline:
            time.sleep(0.1)
            tree = descendants_of(server.process.pid)
        started.append((server, {pid: started_at(pid) for pid in every_pid(tree)}))
        assert len(writer_children(tree)) == workers, tree
        return server, tree

    yield start
    for server, processes in started:
        if server.process.poll() is None:
            server.stop()
        for pid, start_time in processes.items():
            if start_time is not None and started_at(pid) == start_time:
                os.kill(pid, signal.SIGKILL)


def test_workers_and_their_writers_end_when_the_supervisor_is_killed(
    start_with_workers: Callable[[int], Started],
) -> None:
    server, tree = start_with_workers(2)
    workers = [pid for pid, children in tree.items() if children]
    assert len(workers) == 2
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert all(soft_open_file_limit(pid) == hard for pid in workers)  # raised from 256 at start

    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait()
    assert wait_until_ended(every_pid(tree), timeout=5) == []
    with socket.socket() as sock:  # nobody listens on the port any more
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", server.port))
        sock.listen()


def test_the_writer_child_ends_with_its_worker(start_with_workers: Callable[[int], Started]) -> None:
    """A worker killed outright never tells its writer to stop: the writer sees its pipe close."""
    _server, tree = start_with_workers(2)
    worker, [writer] = next((pid, children) for pid, children in tree.items() if children)
    os.kill(worker, signal.SIGKILL)
    assert wait_until_ended([worker, writer], timeout=5) == []


def test_without_the_kernel_a_thread_stops_a_process_whose_parent_ended() -> None:
    """The portable fallback (where prctl is missing): a parent killed with SIGKILL, its child stops."""
    child = (
        "import os, signal, sys\n"
        "from app.server import stop_when_orphaned\n"
        "signal.signal(signal.SIGTERM, lambda *_: (print('stopped', flush=True), os._exit(0)))\n"
        "parent = os.getppid()\n"
        "print(os.getpid(), flush=True)\n"  # the test kills the parent once it reads this
        "stop_when_orphaned(parent, every=0.05)\n"
    )
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time\n"
            f"subprocess.Popen([sys.executable, '-c', {child!r}])\n"
            "time.sleep(60)\n",
        ],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
    )
    assert parent.stdout is not None
    child_pid = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    try:
        assert select.select([parent.stdout], [], [], 5)[0], "the child did not stop"
        assert parent.stdout.readline() == b"stopped\n"
        assert wait_until_ended([child_pid], timeout=5) == []
    finally:
        if parent_of(child_pid) is not None:
            os.kill(child_pid, signal.SIGKILL)
