"""Benchmark: `billing-mirror sync` against the Stripe test server under Stripe's rate limits.

    python -m bench.sync_backfill [--quick] [--objects 1000000] [--rates 25,100]
                                  [--databases sqlite,postgresql] [--rounds 1] [--events 100000]
                                  [--invoices 0] [--threads 8] [--no-baseline] [--no-catch-up]

The Stripe-compatible test server of tests/stripe_server runs in a process of its own
(bench/stripe_server_process.py), loaded once with ``--objects`` invoice items (1 to 7 a second, ids
that do not sort by time), ``--events`` events (a third each invoiceitem.created,
invoice_payment.paid and invoice.paid, within the last days) and, with ``--invoices``, paid invoices
of three lines. Then, each round, for each rate R of ``--rates``:

- fetch only (the baseline): the sync's own Backfill, with its threads, limiter, HTTP client and
  snapshot events, into a store that writes nothing (a child process of this script);
- backfill: ``python -m app.cli.main sync items --max-rps R --max-endpoint-rps R`` into a fresh,
  migrated SQLite file and into a PostgreSQL database created (and dropped) for the run;

with the server's rate limiter answering 429 beyond R requests/s (in all and per endpoint, a token
bucket per second, as Stripe's). The target is objects/s >= 90 % of R x 100 (100 objects a page).
Then ``sync events --since ...`` (catch-up from /v1/events) into each database, no rate limit.

Each run prints requests/s, objects/s (distinct objects, counted in the mirror afterwards), the ratio to
R x 100 and to the fetch-only run of the same round, 429 answers, the sync process's peak RSS (and
its SQLite writer child's), CPU per page of the sync (and writer), of the test server (its share of one
core, and per request) and of PostgreSQL (all its processes), and how busy the machine's cores were.
The time of a run is from the server's first answer to the end of the sync process (its start-up and
imports are left out; everything after the first request is in). Finally every run is listed again,
with the medians over rounds. Talks only to 127.0.0.1 (PostgreSQL at BILLING_MIRROR_BENCH_PG).
"""

from __future__ import annotations

import argparse
import http.client
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
PG_ADMIN = os.environ.get("BILLING_MIRROR_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
PAGE = 100  # objects per page (app.sync.fetch.PAGE_LIMIT)
TARGET = 0.90
CATCH_UP_RPS = "1000"  # the client's limit for catch-up runs (the server has none then)
TICKS = os.sysconf("SC_CLK_TCK")
SAMPLE_SECONDS = 0.1
POSTMASTER: int | None = None  # PostgreSQL's root process on this machine, found at the start
BUFFER_MS: int | None = None  # --limiter-buffer-ms: the experiment's limiter (None: the app's own)
LIMITER_SECONDS = 12.0  # the limiter-only measurement: 2 s of start, 10 s counted


# ---- the test server's process --------------------------------------------------------------------


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    facts: dict[str, Any]

    @property
    def port(self) -> int:
        return int(self.facts["port"])

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def control(self, method: str, path: str) -> dict[str, Any]:
        connection = http.client.HTTPConnection(HOST, self.port, timeout=300)
        try:
            connection.request(method, f"/_bench/{path}")
            response = connection.getresponse()
            body = response.read()
        finally:
            connection.close()
        if response.status != 200:
            raise RuntimeError(f"{method} /_bench/{path}: {response.status} {body[:200]!r}")
        return dict(json.loads(body))


@contextmanager
def stripe_server(items: int, events: int, invoices: int) -> Iterator[ServerProcess]:
    command = [sys.executable, "-m", "bench.stripe_server_process", "--items", str(items)]
    command += ["--events", str(events), "--invoices", str(invoices)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode()  # the server prints nothing else
        if not line.startswith("READY "):
            raise RuntimeError(f"the test server did not start (exit {process.wait()})")
        yield ServerProcess(process, json.loads(line.removeprefix("READY ")))
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ---- processes, from /proc --------------------------------------------------------------------------


def proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of one process (not its children)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS


def proc_peak_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def proc_children(pid: int) -> set[int]:
    found: set[int] = set()
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found.update(int(child) for child in (task / "children").read_text().split())
    except (FileNotFoundError, ProcessLookupError):
        pass
    return found


def is_python(pid: int) -> bool:
    """A Python child (the SQLite writer), not a short-lived tool the SDK runs (``uname -p``)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().startswith("python")
    except (FileNotFoundError, ProcessLookupError):
        return False


def postmaster_pid() -> int | None:
    """The PostgreSQL server's root process on this machine (a ``postgres`` whose parent is not one)."""
    names: dict[int, tuple[str, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        names[int(entry.name)] = (
            text[text.find("(") + 1 : text.rfind(")")],
            int(text.rsplit(")", 1)[1].split()[1]),
        )
    for pid, (name, parent) in names.items():
        if name == "postgres" and names.get(parent, ("", 0))[0] != "postgres":
            return pid
    return None


def postgres_processes(root: int | None) -> dict[int, float]:
    """CPU seconds of the PostgreSQL server and each of its processes (backends, WAL writer, ...)."""
    if root is None:
        return {}
    found: dict[int, float] = {}
    for pid in (root, *proc_children(root)):
        cpu = proc_cpu_seconds(pid)
        if cpu is not None:
            found[pid] = cpu
    return found


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot."""
    values = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


class Sampler(threading.Thread):
    """Polls /proc while a sync runs: CPU and peak RSS of the process and of its Python children (the
    SQLite writer), and the CPU of PostgreSQL's processes (a backend's CPU is read until it exits, so only
    its last interval is lost)."""

    def __init__(self, pid: int, postgres_root: int | None, postgres_before: dict[int, float]) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.postgres_root = postgres_root
        self.series: dict[int, list[tuple[float, float]]] = {}  # pid -> (monotonic, CPU seconds)
        self.peak_mib: dict[int, float] = {}
        self.postgres_first = dict(postgres_before)
        self.postgres_last = dict(postgres_before)
        self.machine: list[tuple[float, int, int]] = []  # (monotonic, busy, total) jiffies
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(SAMPLE_SECONDS)

    def sample(self) -> None:
        now = time.monotonic()
        self.machine.append((now, *machine_busy()))
        for pid in (self.pid, *filter(is_python, proc_children(self.pid))):
            peak, cpu = proc_peak_mib(pid), proc_cpu_seconds(pid)
            if peak is not None:
                self.peak_mib[pid] = peak
            if cpu is not None:
                self.series.setdefault(pid, []).append((now, cpu))
        for pid, cpu in postgres_processes(self.postgres_root).items():
            self.postgres_first.setdefault(pid, 0.0)  # started during the run
            self.postgres_last[pid] = cpu

    def busy_between(self, start: float, end: float) -> float:
        """The share of all cores busy between the samples nearest ``start`` and ``end``."""
        if len(self.machine) < 2:
            return 0.0
        first = min(self.machine, key=lambda sample: abs(sample[0] - start))
        last = min(self.machine, key=lambda sample: abs(sample[0] - end))
        total = last[2] - first[2]
        return (last[1] - first[1]) / total if total > 0 else 0.0

    def postgres_cpu(self) -> float:
        return sum(self.postgres_last[pid] - first for pid, first in self.postgres_first.items())

    def cpu_at(self, pid: int, moment: float) -> float:
        """CPU seconds of ``pid`` at ``moment``, interpolated between samples (0 before the first)."""
        previous: tuple[float, float] | None = None
        for when, cpu in self.series.get(pid, []):
            if when >= moment:
                if previous is None:
                    return 0.0
                span = when - previous[0]
                share = (moment - previous[0]) / span if span > 0 else 1.0
                return previous[1] + (cpu - previous[1]) * share
            previous = (when, cpu)
        return previous[1] if previous else 0.0

    def last_cpu(self, pid: int) -> float:
        series = self.series.get(pid)
        return series[-1][1] if series else 0.0


@dataclass
class Finished:
    returncode: int
    stdout: str
    stderr: str
    started: float  # monotonic
    ended: float  # monotonic, when the process exited
    tree_cpu: float  # the process and the children it waited for (wait4)
    tree_peak_mib: float  # the largest peak RSS among them (wait4)
    sampler: Sampler

    @property
    def children(self) -> list[int]:
        return [pid for pid in self.sampler.series if pid != self.sampler.pid]

    def own_peak_mib(self) -> float:
        return self.sampler.peak_mib.get(self.sampler.pid, self.tree_peak_mib)

    def child_peak_mib(self) -> float | None:
        return max((self.sampler.peak_mib.get(pid, 0.0) for pid in self.children), default=None)

    def cpu_after(self, moment: float) -> tuple[float, float]:
        """CPU seconds of (the process, its children) from ``moment`` to their end: the children's
        from their last sample, the process's as wait4 counted it less its children's."""
        children_total = sum(self.sampler.last_cpu(pid) for pid in self.children)
        children_before = sum(self.sampler.cpu_at(pid, moment) for pid in self.children)
        own_total = self.tree_cpu - children_total
        return own_total - self.sampler.cpu_at(self.sampler.pid, moment), children_total - children_before


def run_measured(command: list[str], env: dict[str, str], postgres_root: int | None) -> Finished:
    """Run ``command``, sampling /proc while it runs, and collect it with wait4."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        postgres_before = postgres_processes(postgres_root)
        started = time.monotonic()
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=err, env=env)
        sampler = Sampler(process.pid, postgres_root, postgres_before)
        sampler.start()
        _, status, usage = os.wait4(process.pid, 0)
        ended = time.monotonic()
        sampler.stop.set()
        sampler.join()
        sampler.sample()  # PostgreSQL's processes once more, after the sync's end
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    return Finished(
        returncode=process.returncode,
        stdout=stdout,
        stderr=stderr,
        started=started,
        ended=ended,
        tree_cpu=usage.ru_utime + usage.ru_stime,
        tree_peak_mib=usage.ru_maxrss / 1024,
        sampler=sampler,
    )


# ---- databases ------------------------------------------------------------------------------------


def settle() -> None:
    """Write back what earlier runs left dirty, so that it is not written during the next one."""
    if hasattr(os, "sync"):
        os.sync()


@contextmanager
def fresh_database(kind: str) -> Iterator[str]:
    """A migrated, empty mirror: a new SQLite file in a temporary folder, or a PostgreSQL database
    created for the run and dropped after it."""
    from app.db.migrate import upgrade

    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="bm_bench_sync_") as folder:
            url = f"sqlite:///{Path(folder) / 'mirror.db'}"
            upgrade(url)
            yield url
        return
    from tests.support import temporary_pg_database

    with temporary_pg_database("bm_bench", PG_ADMIN) as url:
        upgrade(url)
        yield url


def query_row(url: str, sql: str) -> tuple[Any, ...]:
    from sqlalchemy import create_engine, text

    from app.db.engine import normalize_url

    engine = create_engine(normalize_url(url))
    try:
        with engine.connect() as connection:
            return tuple(connection.execute(text(sql)).one())
    finally:
        engine.dispose()


def count_rows(url: str, sql: str) -> int:
    return int(query_row(url, sql)[0])


WINDOWS_SQL = (
    "SELECT count(*), COALESCE(SUM(pages), 0), COALESCE(SUM(CASE WHEN pages <= 1 THEN 1 ELSE 0 END), 0)"
    " FROM sync_windows"
)


def postgres_reachable() -> bool:
    from sqlalchemy import create_engine, text

    try:
        engine = create_engine(PG_ADMIN, connect_args={"connect_timeout": 3})
        with engine.connect() as connection:
            connection.execute(text("select 1"))
        engine.dispose()
        return True
    except Exception:
        return False


# ---- one run --------------------------------------------------------------------------------------


RESOURCES = {"items": ("invoiceitems", "invoice_items"), "invoices": ("invoices", "invoices")}


@dataclass
class Run:
    kind: str  # "fetch only", "backfill", "catch-up"
    resource: str  # items, invoices, events
    database: str  # sqlite, postgresql, "-" for fetch only
    rate: float | None  # R (None: no server limit)
    round: int
    objects: int  # distinct objects (events) in the mirror afterwards (fetch only: distinct ids seen)
    expected: int
    seconds: float
    requests: int  # answered 200
    limited: int  # answered 429
    other: int  # any other status
    sync_peak_mib: float | None
    writer_peak_mib: float | None
    sync_cpu: float  # CPU seconds of the sync process after the first answer
    writer_cpu: float  # the same of its children (the SQLite writer)
    server_cpu: float  # CPU seconds of the test server (idle before the first request)
    postgres_cpu: float  # CPU seconds of every PostgreSQL process during the sync
    machine_busy: float  # share of all cores busy from the first answer to the end
    returncode: int
    note: str = ""
    read: int = 0  # objects in the pages read, those read twice included (0: unknown)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.objects == self.expected and self.other == 0

    @property
    def rate_objects(self) -> float:
        return self.objects / self.seconds if self.seconds > 0 else 0.0

    @property
    def ratio(self) -> float | None:
        return self.rate_objects / (self.rate * PAGE) if self.rate else None

    def per_request_us(self, seconds: float) -> float:
        return seconds / self.requests * 1e6 if self.requests else 0.0


def _program() -> list[str]:
    """``billing-mirror``, or the variant of the experiment (bench/sync_variant.py)."""
    if BUFFER_MS is None:
        return [sys.executable, "-m", "app.cli.main"]
    return [sys.executable, "-m", "bench.sync_variant", str(BUFFER_MS)]


def _sync_command(resource: str, api_base: str, url: str, rps: str, threads: int) -> list[str]:
    from tests.stripe_server.app import API_KEY, API_VERSION

    return [
        *_program(),
        "sync",
        resource,
        "--api-key",
        API_KEY,
        "--api-base",
        api_base,
        "--api-version",
        API_VERSION,
        "--database-url",
        url,
        "--max-rps",
        rps,
        "--max-endpoint-rps",
        rps,
        "--threads",
        str(threads),
        "--no-migrate",
        "--json",
    ]


def _env() -> dict[str, str]:
    """The environment of a sync: never a proxy for 127.0.0.1."""
    env = dict(os.environ)
    for name in ("NO_PROXY", "no_proxy"):
        env[name] = ",".join(filter(None, [env.get(name, ""), HOST, "localhost"]))
    return env


def _measure(
    server: ServerProcess, rate: float | None, command: list[str]
) -> tuple[Finished, dict[str, Any]]:
    """Run a sync command against the server limited to ``rate``: the process and the server's counters."""
    settle()
    server.control("POST", f"reset?rate={rate or 0}")
    finished = run_measured(command, _env(), POSTMASTER)
    return finished, server.control("GET", "stats")


def _run(
    kind: str,
    resource: str,
    database: str,
    rate: float | None,
    round_number: int,
    objects: int,
    expected: int,
    measured: tuple[Finished, dict[str, Any]],
    note: str = "",
    read: int = 0,
) -> Run:
    finished, stats = measured
    statuses = {int(status): count for status, count in stats["statuses"].items()}
    first = float(stats["first"]) if stats["first"] is not None else finished.started
    own_cpu, children_cpu = finished.cpu_after(first)
    return Run(
        kind=kind,
        resource=resource,
        database=database,
        rate=rate,
        round=round_number,
        objects=objects,
        expected=expected,
        seconds=finished.ended - first,
        requests=statuses.get(200, 0),
        limited=statuses.get(429, 0),
        other=sum(count for status, count in statuses.items() if status not in (200, 429)),
        sync_peak_mib=finished.own_peak_mib(),
        writer_peak_mib=finished.child_peak_mib(),
        sync_cpu=own_cpu,
        writer_cpu=children_cpu,
        server_cpu=float(stats["cpu_seconds"]),
        postgres_cpu=finished.sampler.postgres_cpu(),
        machine_busy=finished.sampler.busy_between(first, finished.ended),
        returncode=finished.returncode,
        note=note,
        read=read,
    )


def _failure(finished: Finished) -> str:
    if finished.returncode == 0:
        return ""
    tail = (finished.stderr.strip().splitlines() or ["?"])[-1]
    return f"exit {finished.returncode}: {tail[:120]}"


def backfill(
    server: ServerProcess, database: str, rate: float, round_number: int, resource: str, threads: int
) -> Run:
    _, table = RESOURCES[resource]
    expected = int(server.facts[resource])
    with fresh_database(database) as url:
        command = _sync_command(resource, server.url, url, f"{rate:g}", threads)
        measured = _measure(server, rate, command)
        stored = count_rows(url, f"SELECT count(*) FROM {table}")
        windows, pages, one_page = query_row(url, WINDOWS_SQL)
    finished = measured[0]
    note = _failure(finished)
    read = 0
    if not note and finished.stdout.strip():
        report = json.loads(finished.stdout.strip().splitlines()[-1])
        read = sum(int(item["objects"]) for item in report)
        note = f"{read - stored:,} read twice; " if read != stored else ""
        note += f"{windows:,} windows, {one_page:,} of one page or none, {pages:,} pages"
    return _run("backfill", resource, database, rate, round_number, stored, expected, measured, note, read)


def fetch_only(server: ServerProcess, rate: float, round_number: int, resource: str, threads: int) -> Run:
    expected = int(server.facts[resource])
    with fresh_database("sqlite") as url:  # for the checkpoints' reads only: pages are written nowhere
        command = [sys.executable, "-m", "bench.sync_backfill", "--child-fetch-only", server.url, url]
        command += [f"{rate:g}", str(threads), RESOURCES[resource][0], str(BUFFER_MS)]
        measured = _measure(server, rate, command)
    finished = measured[0]
    note = _failure(finished)
    seen = read = 0
    if not note:
        report = json.loads(finished.stdout.strip().splitlines()[-1])
        seen, read = int(report["distinct"]), int(report["read"])
        note = f"{read - seen:,} read twice" if read != seen else ""
    return _run("fetch only", resource, "-", rate, round_number, seen, expected, measured, note, read)


def catch_up(server: ServerProcess, database: str, round_number: int, threads: int) -> Run:
    expected = int(server.facts["events"])
    since = str(int(server.facts["events_first"]) - 1)
    with fresh_database(database) as url:
        command = [*_sync_command("events", server.url, url, CATCH_UP_RPS, threads), "--since", since]
        measured = _measure(server, None, command)
        stored = count_rows(url, "SELECT count(*) FROM stripe_events WHERE source = 'events_api'")
    finished = measured[0]
    note = _failure(finished)
    if not note and finished.stdout.strip():
        report = json.loads(finished.stdout.strip().splitlines()[-1])
        if report["applied"] != expected or report["failed"]:
            note = f"applied {report['applied']:,}, failed {report['failed']:,}, stale {report['stale']:,}"
    return _run("catch-up", "events", database, None, round_number, stored, expected, measured, note)


def limiter_only(rate: float, round_number: int, threads: int) -> Run:
    """The sync's own limiters (StripeReader: one for the endpoint, one in all), no HTTP: ``threads``
    threads take slots as fast as they are given, for 12 s; the last 10 s are counted."""
    from app.sync.fetch import StripeApi, StripeReader
    from tests.stripe_server.app import API_KEY, API_VERSION

    if BUFFER_MS is not None:
        from bench.sync_variant import patch_limiter

        patch_limiter(BUFFER_MS)
    api = StripeApi(API_KEY, API_VERSION, api_base=f"http://{HOST}:9", max_rps=rate, max_endpoint_rps=rate)
    reader = StripeReader(api)
    started = time.monotonic()
    counting_from, end = started + 2.0, started + LIMITER_SECONDS
    counted = [0]
    lock = threading.Lock()

    def take() -> None:
        while True:
            reader._acquire("/v1/invoiceitems")  # the benchmark calls inside: the limiter alone
            now = time.monotonic()
            if now >= end:
                return
            if now >= counting_from:
                with lock:
                    counted[0] += 1

    workers = [threading.Thread(target=take, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    seconds = end - counting_from
    return Run(
        kind="limiter",
        resource="slots",
        database="-",
        rate=rate,
        round=round_number,
        objects=counted[0] * PAGE,
        expected=counted[0] * PAGE,
        seconds=seconds,
        requests=counted[0],
        limited=0,
        other=0,
        sync_peak_mib=None,
        writer_peak_mib=None,
        sync_cpu=0.0,
        writer_cpu=0.0,
        server_cpu=0.0,
        postgres_cpu=0.0,
        machine_busy=0.0,
        returncode=0,
        note="no HTTP: slots x 100 objects",
    )


# ---- the fetch-only child ---------------------------------------------------------------------------


class NullStore:
    """Backfill's store, writing nothing: each page is acknowledged as applied at once. It keeps the ids
    of the objects it saw, so the run shows that every object was fetched."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def plan(self, events: Any) -> list[Any]:
        from app.ingest.apply import PlannedEvent

        planned = []
        for event in events:
            listed = event.body["data"]["object"]["data"]
            self.seen.update(obj["id"] for obj in listed)
            planned.append(PlannedEvent(event.id, (), []))
        return planned

    def ingest_planned_in_order(
        self, batches: Any, *, in_flight_events: int | None = None
    ) -> Iterator[list[Any]]:
        from app.ingest.apply import IngestResult
        from app.mirror.outcome import Outcome

        for planned in batches:
            yield [IngestResult(event.id, Outcome.APPLIED) for event in planned]


def child_fetch_only(
    api_base: str, database_url: str, rate: str, threads: str, resource: str, buffer_ms: str
) -> None:
    if buffer_ms != "None":
        from bench.sync_variant import patch_limiter

        patch_limiter(int(buffer_ms))
    from app.db.engine import make_engine
    from app.sync.backfill import Backfill
    from app.sync.fetch import StripeApi, StripeReader
    from app.sync.resources import resolve
    from tests.stripe_server.app import API_KEY, API_VERSION

    api = StripeApi(
        API_KEY, API_VERSION, api_base=api_base, max_rps=float(rate), max_endpoint_rps=float(rate)
    )
    engine = make_engine(database_url)
    store = NullStore()
    try:
        report = Backfill(StripeReader(api), engine, store, threads=int(threads)).run(resolve([resource]))
    finally:
        engine.dispose()
    print(json.dumps({"distinct": len(store.seen), "read": sum(item.objects for item in report)}))


# ---- reporting ----------------------------------------------------------------------------------------


def _mib(value: float | None) -> str:
    return "?" if value is None else f"{value:.0f}"


HEADER = (
    f"{'run':<11} {'database':<10} {'R':>4} {'rnd':>3} {'objects':>10} {'s':>7} {'req/s':>7} {'obj/s':>8}"
    f" {'/Rx100':>7} {'/fetch':>7} {'obj/req':>7} {'429':>4} {'peak MiB':>10} {'CPU µs/page':>13}"
    f" {'server':>6} {'µs/req':>6} {'PG µs/pg':>8} {'busy':>5}  check"
)


def row(run: Run, baseline: Run | None) -> str:
    ratio = f"{run.ratio:.1%}" if run.ratio is not None else "-"
    against = f"{run.rate_objects / baseline.rate_objects:.1%}" if baseline and baseline.rate_objects else "-"
    peak = _mib(run.sync_peak_mib) + (f"+{_mib(run.writer_peak_mib)}" if run.writer_peak_mib else "")
    cpu = f"{run.per_request_us(run.sync_cpu):.0f}" + (
        f"+{run.per_request_us(run.writer_cpu):.0f}" if run.writer_cpu else ""
    )
    server_share = run.server_cpu / run.seconds if run.seconds else 0.0
    postgres = f"{run.per_request_us(run.postgres_cpu):.0f}" if run.database == "postgresql" else "-"
    check = "ok" if run.ok else f"CHECK: {run.objects:,} of {run.expected:,}"
    if run.note:
        check += f" ({run.note})"
    rate = f"{run.rate:g}" if run.rate else "-"
    per_request = f"{(run.read or run.objects) / run.requests:.1f}" if run.requests else "-"
    if run.kind == "limiter":
        return (
            f"{run.kind:<11} {run.database:<10} {rate:>4} {run.round:>3} {run.objects:>10,}"
            f" {run.seconds:>7.1f} {run.requests / run.seconds:>7.1f} {run.rate_objects:>8,.0f} {ratio:>7}"
            f"  ({run.note})"
        )
    return (
        f"{run.kind:<11} {run.database:<10} {rate:>4} {run.round:>3} {run.objects:>10,} {run.seconds:>7.1f}"
        f" {run.requests / run.seconds if run.seconds else 0:>7.1f} {run.rate_objects:>8,.0f} {ratio:>7}"
        f" {against:>7} {per_request:>7} {run.limited:>4} {peak:>10} {cpu:>13} {server_share:>6.1%}"
        f" {run.per_request_us(run.server_cpu):>6.0f} {postgres:>8} {run.machine_busy:>5.0%}  {check}"
    )


def baseline_of(run: Run, runs: list[Run]) -> Run | None:
    if run.kind != "backfill":
        return None
    for other in runs:
        if other.kind == "fetch only" and (other.rate, other.round, other.resource) == (
            run.rate,
            run.round,
            run.resource,
        ):
            return other
    return None


def print_summary(runs: list[Run]) -> None:
    print("\nevery run:")
    print(HEADER)
    for run in runs:
        print(row(run, baseline_of(run, runs)))
    print("\nmedians over rounds:")
    groups: dict[tuple[str, str, str, float | None], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.kind, run.resource, run.database, run.rate), []).append(run)
    for (kind, resource, database, rate), members in groups.items():
        rates = [member.rate_objects for member in members]
        label = f"{kind} {resource}, {database}" + (f", R={rate:g}" if rate else "")
        unit = "events/s" if kind == "catch-up" else "objects/s"
        line = f"  {label:<38} {statistics.median(rates):>9,.0f} {unit}"
        if rate:
            ratios = [member.ratio or 0.0 for member in members]
            median = statistics.median(ratios)
            listed = ", ".join(f"{value:.1%}" for value in ratios)
            verdict = "meets" if median >= TARGET else "MISSES"
            line += f"  {median:6.1%} of Rx100 ({listed})"
            if kind == "backfill":
                line += f"  {verdict} the {TARGET:.0%} target"
                against = [
                    member.rate_objects / base.rate_objects
                    for member in members
                    if (base := baseline_of(member, runs)) is not None and base.rate_objects
                ]
                if against:
                    line += f"; {statistics.median(against):.1%} of fetch only"
        else:
            line += "  (" + ", ".join(f"{value:,.0f}" for value in rates) + ")"
        if not all(member.ok for member in members):
            line += "  (a run did not check out: see above)"
        print(line)


# ---- main ---------------------------------------------------------------------------------------------


def code_version() -> str:
    """The commit, and the app/ files changed since, which the figures belong to."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", "app"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git)"
    changed = [line[3:] for line in changed if line.strip()]
    return f"{commit}" + (f" with uncommitted changes to {', '.join(changed)}" if changed else "")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="50,000 objects, 20,000 events, one round")
    parser.add_argument("--objects", type=int, default=None, help="invoice items (default 1,000,000)")
    parser.add_argument("--events", type=int, default=None, help="events to catch up (default 100,000)")
    parser.add_argument("--invoices", type=int, default=0, help="also back-fill this many invoices")
    parser.add_argument("--rates", default="25,100", help="R: requests/s, in all and per endpoint")
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--rounds", type=int, default=None, help="default 1")
    parser.add_argument("--threads", type=int, default=8, help="the sync's --threads (its default: 8)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the fetch-only runs")
    parser.add_argument("--no-catch-up", action="store_true", help="skip the sync events runs")
    parser.add_argument("--no-backfill", action="store_true", help="only the catch-up runs")
    parser.add_argument(
        "--limiter-buffer-ms",
        type=int,
        default=None,
        help="EXPERIMENT: run the sync with its limiters' pyrate-limiter buffer_ms set to this"
        " (bench/sync_variant.py; the app uses app.sync.fetch.LIMITER_BUFFER_MS)",
    )
    args = parser.parse_args()
    objects = args.objects if args.objects is not None else (50_000 if args.quick else 1_000_000)
    events = args.events if args.events is not None else (20_000 if args.quick else 100_000)
    rounds = args.rounds if args.rounds is not None else 1
    rates = [float(value) for value in args.rates.split(",") if value]
    databases = [name for name in args.databases.split(",") if name]
    if args.no_catch_up:
        events = 0
    global POSTMASTER, BUFFER_MS
    POSTMASTER = postmaster_pid()
    BUFFER_MS = args.limiter_buffer_ms
    if "postgresql" in databases and not postgres_reachable():
        print("PostgreSQL: not reachable, skipped")
        databases.remove("postgresql")
    resources = ["items"] + (["invoices"] if args.invoices else [])

    # Imported now, not when first needed: app/ may be edited while a long run goes on.
    for module in (
        "app.db.engine",
        "app.db.migrate",
        "app.sync.fetch",
        "tests.support",
        "bench.sync_variant",
    ):
        importlib.import_module(module)

    load = os.getloadavg()
    version = code_version()
    print(f"code: {version}")
    if args.limiter_buffer_ms is not None:
        print(
            f"EXPERIMENT: the sync's limiters wait {args.limiter_buffer_ms} ms beyond what they must"
            " (bench/sync_variant.py), not the app's app.sync.fetch.LIMITER_BUFFER_MS"
        )
    print(
        f"sync benchmark: {objects:,} invoice items, {args.invoices:,} invoices, {events:,} events;"
        f" rates {', '.join(f'{rate:g}' for rate in rates)} requests/s; {', '.join(databases)};"
        f" {rounds} round(s); {args.threads} threads; {os.cpu_count()} cores, load average"
        f" {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    runs: list[Run] = []
    with stripe_server(objects, events, args.invoices) as server:
        facts = server.facts
        print(
            f"test server (pid {server.process.pid}): loaded in {facts['load_seconds']:.1f} s,"
            f" peak RSS {facts['peak_rss_mib']:,} MiB, {server.url}"
        )
        cost = server.control("GET", "page_cost?pages=300")
        if cost.get("pages"):
            print(
                f"server CPU per 100-object page of /v1/invoiceitems (in process, ASGI, no HTTP):"
                f" {cost['cpu_us_per_page']:.0f} µs ({cost['mean_page_bytes'] / 1024:.0f} KiB a page),"
                f" so at R = 100: {cost['cpu_us_per_page'] * 100 / 1e6:.1%} of a core"
            )
        print()
        print(HEADER)

        def record(run: Run) -> None:
            runs.append(run)
            print(row(run, baseline_of(run, runs)), flush=True)

        for round_number in range(1, rounds + 1):
            # Alternate the order of the databases from round to round.
            order = databases if round_number % 2 else databases[::-1]
            for resource in resources if not args.no_backfill else []:
                for rate in rates:
                    if not args.no_baseline:
                        if resource == "items":
                            record(limiter_only(rate, round_number, args.threads))
                        record(fetch_only(server, rate, round_number, resource, args.threads))
                    for database in order:
                        record(backfill(server, database, rate, round_number, resource, args.threads))
            if events:
                for database in order:
                    record(catch_up(server, database, round_number, args.threads))
        stats = server.control("GET", "stats")
        print(f"\ntest server peak RSS {stats['peak_rss_mib']:,.0f} MiB")
    print_summary(runs)
    if code_version() != version:
        print(f"\nWARNING: the code changed during the run: {version} then {code_version()}")
    print(
        "\ncolumns: time from the server's first answer to the end of the sync process; objects: distinct,"
        " counted in the mirror afterwards (fetch only: distinct ids seen); /Rx100: objects/s against"
        " R x 100; /fetch: against the fetch-only run of the same round and R; 429: answers of the"
        " server's rate limiter; peak MiB: sync process + SQLite writer child (VmHWM); CPU µs/page:"
        " sync process + writer, per 200 answer; server: the test server's CPU as a share of one core,"
        " and per request; PG µs/pg: every PostgreSQL process, per page; busy: both cores."
    )
    sys.exit(0 if all(run.ok for run in runs) else 1)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child-fetch-only":
        sys.path.insert(0, str(ROOT))
        child_fetch_only(*sys.argv[2:8])
    else:
        main()
