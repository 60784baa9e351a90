"""Benchmark: `billing-mirror replay --direct` throughput and memory, SQLite and PostgreSQL.

    python -m bench.replay_direct [--events 20000] [--scale 10] [--no-postgres] [--no-sqlite]

Generates N distinct recorded events (a third each: invoiceitem.created, invoice_payment.paid,
invoice.paid with an embedded payment; built from tests/fixtures) into a JSONL file, and the same
for N x scale. Every measurement runs in its own child process, which reports its peak RSS:

- baseline: read + parse + envelope check of the file, no database (the floor of any replay);
- list envelope: the N x scale events as one {"object": "list", "data": [...]} file, read only
  (streams: its peak RSS must not grow with the file);
- sqlite / postgresql: `billing-mirror replay --direct` into a fresh database (a new SQLite file;
  a PostgreSQL database created and dropped here), through the real CLI command. SQLite runs
  twice: the first run on a machine that just booted pays for memory it touches first (see main).

Prints events/s (wall clock), the ratio to the baseline measured in the same run, the CPU time per
event (less sensitive to other load on a shared machine; waits for fsync and for PostgreSQL are not in
it) and the peak RSS in MiB, each as "replaying process + SQLite writer process" where the replay
started one (app.ingest.sqlite_writer).
Talks only to 127.0.0.1 (PostgreSQL at BILLING_MIRROR_BENCH_PG, default the local server).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
PG_ADMIN = os.environ.get("BILLING_MIRROR_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def generate_events(count: int) -> Iterator[dict[str, Any]]:
    templates = [
        json.loads((FIXTURES / name).read_text())
        for name in ("invoiceitem.created.json", "invoice_payment.paid.json", "invoice.paid.json")
    ]
    for number in range(count):
        kind = number % 3
        event = copy.deepcopy(templates[kind])
        event["id"] = f"evt_bench_{number:010d}"
        event["created"] += number
        obj = event["data"]["object"]
        if kind == 0:
            obj["id"] = f"ii_bench_{number:010d}"
        elif kind == 1:
            obj["id"] = f"inpay_bench_{number:010d}"
        else:
            obj["id"] = f"in_bench_{number:010d}"
            obj["payments"]["data"][0]["id"] = f"inpay_benchinv_{number:010d}"
            for position, line in enumerate(obj["lines"]["data"]):  # Stripe's line ids are unique
                line.update(id=f"il_bench_{number:010d}_{position}", invoice=obj["id"])
        yield event


def write_jsonl(path: Path, count: int) -> None:
    with path.open("w", encoding="utf-8") as out:
        for event in generate_events(count):
            out.write(json.dumps(event, separators=(",", ":")) + "\n")


def write_list_envelope(path: Path, count: int) -> None:
    with path.open("w", encoding="utf-8") as out:
        out.write('{\n  "object": "list",\n  "data": [\n')
        for number, event in enumerate(generate_events(count)):
            out.write(("" if number == 0 else ",\n") + json.dumps(event, indent=2))
        out.write('\n  ],\n  "has_more": false,\n  "url": "/v1/events"\n}\n')


# --- child processes -------------------------------------------------------------------------


def child_read(path: str) -> int:
    from app.mirror.envelope import EnvelopeError
    from app.recording.event_files import SourceValue, iter_sources
    from app.recording.replay import to_event

    count = 0
    for item in iter_sources([path]):
        if isinstance(item, SourceValue):
            try:
                to_event(item)
                count += 1
            except EnvelopeError:
                pass
    return count


def child_direct(path: str, database_url: str) -> int:
    from click.testing import CliRunner

    from app.cli.main import cli

    result = CliRunner().invoke(
        cli, ["replay", path, "--direct", "--no-migrate", "--json"], env={"DATABASE_URL": database_url}
    )
    if result.exit_code != 0:
        raise SystemExit(f"replay failed: {result.output}")
    summary = json.loads(result.output.strip().splitlines()[-1])
    return int(summary["applied"])


def run_child(argv: list[str]) -> None:
    import importlib

    for module in (
        "app.cli.main",
        "app.recording.event_files",
        "app.recording.replay",
    ):  # imports are not what is measured
        importlib.import_module(module)

    mode, path = argv[0], argv[1]
    cpu_before = time.process_time()
    started = time.perf_counter()
    count = child_read(path) if mode == "read" else child_direct(path, argv[2])
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu_before
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # The SQLite writer process, when the replay started one (it has ended by now).
    writer = resource.getrusage(resource.RUSAGE_CHILDREN)
    figures = {
        "events": count,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "peak_mib": peak_kib / 1024,
        "writer_cpu_seconds": writer.ru_utime + writer.ru_stime,
        "writer_peak_mib": writer.ru_maxrss / 1024,
    }
    print(json.dumps(figures))


def settle() -> None:
    """Write back what earlier steps left dirty (the generated files, the last mirror) first, so that
    the kernel's writeback of them does not land inside the next measurement."""
    if hasattr(os, "sync"):
        os.sync()


def remove_sqlite(url: str) -> None:
    path = Path(url.removeprefix("sqlite:///"))
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def measure(*args: str) -> dict[str, float]:
    settle()
    output = subprocess.run(
        [sys.executable, __file__, "--child", *args], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    return json.loads(output.strip().splitlines()[-1])  # type: ignore[no-any-return]


# --- databases ---------------------------------------------------------------------------------


def fresh_sqlite(folder: Path, name: str) -> str:
    from app.db.migrate import upgrade

    url = f"sqlite:///{folder / name}"
    upgrade(url)
    return url


@contextmanager
def temporary_postgres() -> Iterator[str]:
    """A migrated scratch database, dropped afterwards."""
    from app.db.migrate import upgrade
    from tests.support import temporary_pg_database

    with temporary_pg_database("bm_bench", PG_ADMIN) as url:
        upgrade(url)
        yield url


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


# --- main --------------------------------------------------------------------------------------


def row(label: str, events: int, figures: dict[str, float], baseline_rate: float | None) -> str:
    rate = figures["events"] / figures["seconds"] if figures["seconds"] else 0.0
    per_event = 1e6 / figures["events"] if figures["events"] else 0.0
    cpu = f"{figures['cpu_seconds'] * per_event:.0f}"
    writer_cpu = figures.get("writer_cpu_seconds", 0.0)
    if writer_cpu:
        cpu += f" + {writer_cpu * per_event:.0f}"
    ratio = f"{rate / baseline_rate:6.2f}" if baseline_rate else "  1.00"
    peak = f"{figures['peak_mib']:.0f}"
    if writer_cpu:
        peak += f" + {figures['writer_peak_mib']:.0f}"
    return f"{label:<36} {events:>9,} {rate:>10,.0f} {ratio:>7} {cpu:>16} {peak:>11}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--scale", type=int, default=10, help="the memory check uses events x scale")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--no-sqlite", action="store_true", help="skip the SQLite replays")
    options = parser.parse_args()
    sys.path.insert(0, str(ROOT))

    small, large = options.events, options.events * options.scale
    with tempfile.TemporaryDirectory(prefix="bm_bench_") as folder_name:
        folder = Path(folder_name)
        files = {count: folder / f"events_{count}.jsonl" for count in (small, large)}
        for count, path in files.items():
            write_jsonl(path, count)
        listing = folder / f"list_{large}.json"
        write_list_envelope(listing, large)
        size_mib = {count: path.stat().st_size / 2**20 for count, path in files.items()}
        print(
            f"events: {small:,} ({size_mib[small]:.0f} MiB of JSONL) and {large:,}"
            f" ({size_mib[large]:.0f} MiB);"
            f" list envelope {listing.stat().st_size / 2**20:.0f} MiB; cpu count {os.cpu_count()}"
        )
        header = ("measurement", "events", "events/s", "x base", "CPU us/event", "peak MiB")
        print("{:<36} {:>9} {:>10} {:>7} {:>16} {:>11}".format(*header))

        baselines: dict[int, float] = {}
        for count in dict.fromkeys((small, large)):  # once each, also when --scale 1
            figures = measure("read", str(files[count]))
            baselines[count] = figures["events"] / figures["seconds"]
            print(row("baseline: read + parse (JSONL)", count, figures, None))
        print(row("read list envelope (pretty)", large, measure("read", str(listing)), baselines[large]))

        # Twice each, into a new file each time, the first one deleted before the second starts.
        # The first writes into memory this machine has not used before: a virtual machine that has
        # just booted makes the host back each new page of the page cache on first touch (seen here:
        # the copy into the page cache took 10 % of all CPU time instead of 0.6 %). The second reuses
        # the pages the first freed, as a machine that has been running a while does.
        for count in dict.fromkeys((small, large)) if not options.no_sqlite else ():
            for attempt in ("first run", "again"):
                url = fresh_sqlite(folder, f"mirror_{count}.db")
                figures = measure("direct", str(files[count]), url)
                remove_sqlite(url)
                print(row(f"replay --direct, SQLite ({attempt})", count, figures, baselines[count]))

        if options.no_postgres:
            return
        if not postgres_reachable():
            print("PostgreSQL: not reachable, skipped")
            return
        for count in dict.fromkeys((small, large)):  # once each, also when --scale 1
            with temporary_postgres() as url:
                figures = measure("direct", str(files[count]), url)
            print(row("replay --direct, PostgreSQL", count, figures, baselines[count]))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        sys.path.insert(0, str(ROOT))
        run_child(sys.argv[2:])
    else:
        main()
