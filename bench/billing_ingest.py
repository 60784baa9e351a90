"""How much an invoice event (the invoice, its lines, the item links, the line-set marker and the guarded
DELETE) costs against the baseline of an invoice_payment.paid event (one guarded upsert), measured in
the same run through EventStore on SQLite and, when reachable, PostgreSQL.

    python -m bench.billing_ingest [--events 2000] [--batch 1 --batch 64]

Prints events per second and the ratio invoice/payment for each database and batch size.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.db.engine import make_engine
from app.db.migrate import upgrade
from app.ingest.store import EventStore
from app.mirror.envelope import Event, parse_event
from tests.support import encode, load_fixture, make_event, postgres_problem, temporary_pg_database

T0 = 1_767_225_600


def invoice_events(count: int) -> list[Event]:
    template = load_fixture("billing/invoice.created.json")["data"]["object"]
    events = []
    for n in range(count):
        obj = copy.deepcopy(template)
        obj["id"] = f"in_bench_{n:06d}"
        for position, line in enumerate(obj["lines"]["data"]):
            line.update(id=f"il_bench_{n:06d}_{position}", invoice=obj["id"])
            details = line["parent"][line["parent"]["type"]]
            if details.get("invoice_item"):
                details["invoice_item"] = f"ii_bench_{n:06d}_{position}"
        events.append(parse_event(encode(make_event("invoice.created", obj, created=T0 + n))))
    return events


def payment_events(count: int) -> list[Event]:
    template = load_fixture("invoice_payment.paid.json")["data"]["object"]
    return [
        parse_event(
            encode(
                make_event("invoice_payment.paid", {**template, "id": f"inpay_bench_{n:06d}"}, created=T0 + n)
            )
        )
        for n in range(count)
    ]


def rate(url: str, events: list[Event], batch: int) -> float:
    engine = make_engine(url)
    store = EventStore(engine)
    started = time.perf_counter()
    for start in range(0, len(events), batch):
        for result in store.ingest(events[start : start + batch]):
            assert not isinstance(result, Exception) and result.error is None, result
    elapsed = time.perf_counter() - started
    engine.dispose()
    return len(events) / elapsed


def measure(name: str, fresh_url: Callable[[], Any], count: int, batches: list[int]) -> None:
    invoices, payments = invoice_events(count), payment_events(count)
    for batch in batches:
        with fresh_url() as url:
            baseline = rate(url, payments, batch)
        with fresh_url() as url:
            billing = rate(url, invoices, batch)
        print(
            f"{name:10} batch {batch:>3}: invoice_payment.paid {baseline:8.0f} ev/s | "
            f"invoice.created with 3 lines {billing:8.0f} ev/s | ratio {billing / baseline:.2f}"
        )


class SqliteFile:
    def __enter__(self) -> str:
        self.dir = tempfile.TemporaryDirectory()
        url = f"sqlite:///{Path(self.dir.name) / 'bench.db'}"
        upgrade(url)
        return url

    def __exit__(self, *exc: object) -> None:
        self.dir.cleanup()


class PgDatabase:
    def __enter__(self) -> str:
        self.context = temporary_pg_database("bm_bench")
        url = self.context.__enter__()
        upgrade(url)
        return url

    def __exit__(self, *exc: object) -> None:
        self.context.__exit__(None, None, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--batch", type=int, action="append")
    args = parser.parse_args()
    batches = args.batch or [1, 64]
    measure("sqlite", SqliteFile, args.events, batches)
    problem = postgres_problem()
    if problem:
        print(f"postgresql skipped: {problem}")
    else:
        measure("postgresql", PgDatabase, args.events, batches)


if __name__ == "__main__":
    main()
