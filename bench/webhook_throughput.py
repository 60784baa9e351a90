"""Durable webhook throughput against a bare Starlette endpoint, measured in one run.

    python -m bench.webhook_throughput [--requests 10000] [--concurrency 64] [--rounds 3] [--skip-postgres]
                                       [--workers 2] [--logs]

One run starts, one after the other, on 127.0.0.1 and with the same uvicorn settings:
  1. bench/bare_app.py: reads the body and answers 200 JSON (the baseline);
  2. billing-mirror on a fresh, migrated SQLite file;
  3. billing-mirror on a temporary PostgreSQL database (created, migrated, dropped), with --workers
     server processes.
The same load generator sends each server the same number of distinct signed deliveries (after a
warm-up) and the script prints events/s, p50/p99 latency and the ratio to the baseline. billing-mirror
answers 2xx only after the event's transaction committed, so afterwards the number of rows in
stripe_events must equal the number of 2xx answers; the script checks it.

With ``--logs`` a round is instead ``billing-mirror serve`` itself twice on each database, once with its
logs at the default level (info: a line per delivery, uvicorn's access log on) and once at warning (no
line per delivery), in alternating order, its log written to a file; the script prints the throughput
with logs as a share of the throughput without, the server process's CPU per event, and the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from app.db.engine import normalize_url
from app.db.migrate import upgrade
from bench.deliveries import Delivery, DeliveryFactory, http_request
from bench.loadgen import LoadResult, drive
from tests.support import temporary_pg_database

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
SECRET = "whsec_benchmark_secret"
TOLERANCE_SECONDS = 300
# Identical for every server of the run: one event loop implementation, one HTTP parser, no access log.
UVICORN_OPTIONS = ("--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning")
PG_ADMIN_URL = os.environ.get(
    "BILLING_MIRROR_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


@dataclass
class Measurement:
    name: str
    result: LoadResult
    warmup: LoadResult
    stored: int | None = None  # rows in stripe_events after the run (None for the baseline)
    writer: dict[str, Any] | None = None
    server_cpu_us: float | None = None  # CPU of the server process per measured request (--logs)


# The server process of the running uvicorn_server, to read its CPU time (one server at a time).
_RUNNING: list[subprocess.Popen[bytes]] = []


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def get_json(port: int, path: str, timeout: float = 2.0) -> dict[str, Any]:
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"GET {path}: {head[:60]!r}")
    return dict(json.loads(body))


@contextlib.contextmanager
def uvicorn_server(
    target: str,
    workers: int = 1,
    env: dict[str, str] | None = None,
    factory: bool = False,
    log_level: str | None = None,
) -> Iterator[int]:
    port = free_port()
    options: tuple[str, ...] = UVICORN_OPTIONS
    stderr = None
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        target,
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        str(workers),
        *options,
    ]
    if factory:
        command.append("--factory")
    if log_level is not None:
        # `billing-mirror serve` itself (its HTTP protocol, its logs at this level), its log to a file.
        folder = Path(tempfile.mkdtemp(prefix="bm-bench-logs-"))
        stderr = (folder / "server.log").open("wb")
        serve = ("serve", "--no-migrate", "--host", HOST, "--port", str(port), "--workers", str(workers))
        command = [sys.executable, "-m", "app.cli.main", *serve, "--log-level", log_level]
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **(env or {})}, stderr=stderr)
    _RUNNING[:] = [process]
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{target} exited with {process.returncode}")
            try:
                get_json(port, "/healthz", timeout=0.5)
                break
            except (OSError, RuntimeError, ValueError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{target} did not start") from None
                time.sleep(0.1)
        if workers > 1:
            time.sleep(1.0)  # let every worker process finish its start-up
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if stderr is not None:
            stderr.close()
            lines = Path(stderr.name).read_text().count("\n")
            print(f"  ({lines} log lines at {log_level})")


def signed_requests(deliveries: list[Delivery]) -> list[bytes]:
    """Signed now: each phase signs its own deliveries just before sending them."""
    now = int(time.time())
    return [http_request(delivery, SECRET, now) for delivery in deliveries]


def load(port: int, deliveries: list[Delivery], concurrency: int) -> LoadResult:
    started = time.monotonic()
    result = asyncio.run(drive(HOST, port, signed_requests(deliveries), concurrency))
    if time.monotonic() - started > TOLERANCE_SECONDS * 0.8:
        print("warning: a phase came close to the signature tolerance; use fewer --requests", file=sys.stderr)
    return result


def count_stored(url: str) -> int:
    engine = create_engine(normalize_url(url))
    try:
        with engine.connect() as connection:
            return int(connection.execute(text("SELECT count(*) FROM stripe_events")).scalar_one())
    finally:
        engine.dispose()


def settle() -> None:
    """Write back what the previous server left dirty, so that its writeback does not land inside
    the next measurement (of whichever server)."""
    if hasattr(os, "sync"):
        os.sync()


def measure_bare(warmup: list[Delivery], measured: list[Delivery], concurrency: int) -> Measurement:
    settle()
    with uvicorn_server("bench.bare_app:app") as port:
        warm = load(port, warmup, concurrency)
        result = load(port, measured, concurrency)
    return Measurement("bare Starlette endpoint", result, warm)


def measure_mirror(
    name: str,
    url: str,
    warmup: list[Delivery],
    measured: list[Delivery],
    concurrency: int,
    workers: int,
    factory: str,
    log_level: str | None = None,
) -> Measurement:
    upgrade(url)
    settle()
    env = {"DATABASE_URL": url, "STRIPE_WEBHOOK_SECRET": SECRET}
    with uvicorn_server(factory, workers=workers, env=env, factory=True, log_level=log_level) as port:
        warm = load(port, warmup, concurrency)
        pid = _RUNNING[0].pid
        cpu_before = process_cpu_seconds(pid) if workers == 1 else 0.0
        result = load(port, measured, concurrency)
        cpu = process_cpu_seconds(pid) - cpu_before if workers == 1 else None
        writer = get_json(port, "/healthz")["writer"] if workers == 1 else None
    # The server is stopped: whatever it answered 2xx must be in the database now.
    measurement = Measurement(name, result, warm, stored=count_stored(url), writer=writer)
    if cpu is not None:
        measurement.server_cpu_us = cpu / max(1, len(measured)) * 1e6
    return measurement


def report(measurements: list[Measurement], concurrency: int) -> bool:
    baseline = measurements[0].result.rate
    print(
        f"\n{len(measurements[0].result.latencies)} requests per server after a warm-up, "
        f"{concurrency} keep-alive connections, load generator on the same machine "
        f"({os.cpu_count()} cores)\n"
    )
    print(
        f"{'server':<40} {'events/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'ratio':>7} {'non-2xx':>8} "
        f"{'errors':>7} {'ev/commit':>9}"
    )
    durable = True
    for m in measurements:
        r = m.result
        per_commit = ""
        if m.writer and m.writer.get("commits"):
            per_commit = f"{m.writer['events'] / m.writer['commits']:.1f}"
        p50, p99 = r.percentile(0.50) * 1000, r.percentile(0.99) * 1000
        print(
            f"{m.name:<40} {r.rate:>9.0f} {p50:>8.2f} {p99:>8.2f} "
            f"{r.rate / baseline:>6.1%} {r.not_ok:>8} {r.errors:>7} {per_commit:>9}"
        )
    print()
    for m in measurements[1:]:
        answered = m.result.ok + m.warmup.ok
        verdict = "OK" if m.stored == answered else "MISMATCH"
        durable &= m.stored == answered
        extra = f"; writer {m.writer}" if m.writer else ""
        print(
            f"durability {m.name}: {answered} answered 2xx, {m.stored} rows in stripe_events: "
            f"{verdict}{extra}"
        )
    if any(m.result.not_ok or m.warmup.not_ok for m in measurements):
        for m in measurements:
            print(f"status codes {m.name}: {dict(m.result.statuses)} warm-up {dict(m.warmup.statuses)}")
    return durable and all(m.result.not_ok == 0 for m in measurements)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=10_000, help="measured requests per server")
    parser.add_argument("--warmup", type=int, default=500, help="warm-up requests per server")
    parser.add_argument("--concurrency", type=int, default=64, help="keep-alive connections")
    parser.add_argument("--workers", type=int, default=1, help="server processes for the PostgreSQL run")
    parser.add_argument(
        "--rounds", type=int, default=3, help="bare/mirror rounds; the median ratio is reported"
    )
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument(
        "--logs", action="store_true", help="compare logs at the default level (info) with logs at warning"
    )
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument(
        "--app",
        default="app.main:create_app",
        help="billing-mirror's application factory, to compare a variant (importable module)",
    )
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()  # a cheaper client leaves more of the shared CPU to the server
    except ImportError:
        pass

    factory = DeliveryFactory()
    ratios: dict[str, list[float]] = {}
    ok = True
    if args.logs:
        sys.exit(0 if compare_logs(factory, args) else 1)
    for round_number in range(1, args.rounds + 1):
        print(f"\n=== round {round_number} of {args.rounds}")
        measurements = run_round(factory, args)
        ok &= report(measurements, args.concurrency)
        for m in measurements[1:]:
            ratios.setdefault(m.name, []).append(m.result.rate / measurements[0].result.rate)
    # The machine is shared with the load generator (and maybe other work): single runs swing, so the
    # verdict is the median of the per-round ratios, each against the bare endpoint of its own round.
    print(f"\nmedian ratio to the bare endpoint over {args.rounds} round(s):")
    for name, values in ratios.items():
        listed = ", ".join(f"{value:.1%}" for value in values)
        print(f"  {name:<40} {statistics.median(values):>6.1%}   ({listed})")
    sys.exit(0 if ok else 1)


def compare_logs(factory: DeliveryFactory, args: argparse.Namespace) -> bool:
    """Rounds of billing-mirror with logs at info and at warning, in alternating order; the
    throughput with logs as a share of the throughput without, per database."""
    shares: dict[str, list[float]] = {}
    extra_cpu: dict[str, list[float]] = {}
    ok = True
    databases = [
        name for name, skip in (("SQLite", args.skip_sqlite), ("PostgreSQL", args.skip_postgres)) if not skip
    ]
    for round_number in range(1, args.rounds + 1):
        order = ("warning", "info") if round_number % 2 else ("info", "warning")
        print(f"\n=== logs round {round_number} of {args.rounds}: {' then '.join(order)}")
        for database in databases:
            rates: dict[str, float] = {}
            cpus: dict[str, float] = {}
            for level in order:
                warmup, measured = factory.deliveries(args.warmup), factory.deliveries(args.requests)
                name = f"billing-mirror, {database}, logs at {level}"
                with contextlib.ExitStack() as stack:
                    if database == "SQLite":
                        folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="bm-bench-"))
                        url = f"sqlite:///{Path(folder) / 'mirror.db'}"
                    else:
                        url = stack.enter_context(temporary_pg_database("bm_bench", PG_ADMIN_URL))
                    m = measure_mirror(
                        name,
                        url,
                        warmup,
                        measured,
                        args.concurrency,
                        workers=1 if database == "SQLite" else args.workers,
                        factory=args.app,
                        log_level=level,
                    )
                answered = m.result.ok + m.warmup.ok
                ok &= m.stored == answered and m.result.not_ok == 0
                rates[level] = m.result.rate
                cpus[level] = m.server_cpu_us or 0.0
                p50, p99 = m.result.percentile(0.50) * 1000, m.result.percentile(0.99) * 1000
                print(
                    f"  {name:<45} {m.result.rate:>9.0f} events/s  p50 {p50:.2f} ms  p99 {p99:.2f} ms"
                    f"  server CPU {cpus[level]:.0f} us/event"
                )
            share = rates["info"] / rates["warning"]
            shares.setdefault(database, []).append(share)
            extra_cpu.setdefault(database, []).append(cpus["info"] - cpus["warning"])
            print(
                f"  {database}: with the line per delivery {share:.1%} of the throughput without;"
                f" server CPU {cpus['info'] - cpus['warning']:+.0f} us/event"
            )
    print(f"\nthroughput with logs at info as a share of logs at warning, median of {args.rounds} round(s):")
    for database, values in shares.items():
        listed = ", ".join(f"{value:.1%}" for value in values)
        cpu_listed = ", ".join(f"{value:+.0f}" for value in extra_cpu[database])
        print(f"  {database:<12} {statistics.median(values):>6.1%}   ({listed})")
        print(
            f"  {'':<12} server CPU per event, info minus warning: median"
            f" {statistics.median(extra_cpu[database]):+.0f} us ({cpu_listed})"
        )
    return ok


def run_round(factory: DeliveryFactory, args: argparse.Namespace) -> list[Measurement]:
    """The bare endpoint, then billing-mirror on each database, each with its own fresh deliveries."""
    phases = 1 + (not args.skip_sqlite) + (not args.skip_postgres)
    # Every server gets its own distinct deliveries (so no server sees duplicates), of the same mix.
    sets = [(factory.deliveries(args.warmup), factory.deliveries(args.requests)) for _ in range(phases)]
    print(
        f"generated {phases} x {args.warmup + args.requests} distinct deliveries "
        f"(average body {sum(len(d.body) for d in sets[0][1]) / max(1, args.requests):.0f} bytes)"
    )
    measurements = [measure_bare(*sets.pop(0), args.concurrency)]
    if not args.skip_sqlite:
        with tempfile.TemporaryDirectory(prefix="bm-bench-") as folder:
            url = f"sqlite:///{Path(folder) / 'mirror.db'}"
            measurements.append(
                measure_mirror(
                    "billing-mirror, SQLite (1 worker)",
                    url,
                    *sets.pop(0),
                    args.concurrency,
                    workers=1,
                    factory=args.app,
                )
            )
    if not args.skip_postgres:
        with temporary_pg_database("bm_bench", PG_ADMIN_URL) as url:
            measurements.append(
                measure_mirror(
                    f"billing-mirror, PostgreSQL ({args.workers} worker(s))",
                    url,
                    *sets.pop(0),
                    args.concurrency,
                    workers=args.workers,
                    factory=args.app,
                )
            )
    return measurements


if __name__ == "__main__":
    main()
