"""Read API latency on a large mirror: p50/p99 of 100-row list pages, SQLite and PostgreSQL.

    python -m bench.read_api_latency                  # 1,000,000 invoice items, both databases
    python -m bench.read_api_latency --items 50000    # quick run

What is timed: server-side work only. Each request is an in-process ASGI call to the real application
(create_app: routing, API-key check, parameter parsing, the SQL query, the JSON body) through
Starlette's TestClient, so no socket or HTTP parsing is included. The "query" column times the query
function alone (app.read.*.list_page on an open connection). The baseline, measured in the same run on
the same database, is GET /v1/invoiceitems/{id} (a primary-key lookup through the same stack); the
ratio column is p99 / baseline p99. The last column shows the page query's plan (EXPLAIN): the index it
reads and "+sort" when the database sorts (PostgreSQL does so, by choice, when its statistics say only a
few rows match: a bitmap scan and a sort of those rows), which does not depend on how busy the machine is;
on PostgreSQL also the executor's own time for 20 page queries (EXPLAIN ANALYZE, the slowest of them).

The mirror is filled by bulk insert (the only place in the project that writes rows directly), with
rows built by the handlers' own column mapping (app.mirror.handlers.items.item_columns, ...payment_columns),
so every row holds exactly what ingesting the event would have stored. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sqlite3
import statistics
import string
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url
from starlette.testclient import TestClient

from app.db.engine import make_engine, normalize_url
from app.db.migrate import upgrade
from app.db.models import InvoiceItem, InvoicePayment
from app.json_text import json_text
from app.main import create_app
from app.mirror.handlers.items import item_columns
from app.mirror.handlers.payments import payment_columns
from app.mirror.upsert import table_of
from app.read.params import parse_list_request, parse_query_string
from app.read.resource import Resource
from app.read.resources import invoice_items, invoice_payments
from app.settings import Settings
from tests.support import temporary_pg_database

API_KEY = "bm_bench_key"
PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
START = 1_704_067_200  # 2024-01-01
SPAN = 2 * 365 * 86_400  # two years of history
ALPHABET = string.ascii_letters + string.digits


def stripe_id(prefix: str, rng: random.Random) -> str:
    return prefix + "".join(rng.choices(ALPHABET, k=24))


# ---- data -------------------------------------------------------------------------------------


@dataclass
class Mirror:
    customers: list[str]
    invoices: list[str]
    item_ids: list[str]
    item_dates: list[int]
    payment_ids: list[str]
    payment_invoices: list[str]
    payment_intents: list[str]


def build_items(count: int, rng: random.Random) -> tuple[list[dict[str, Any]], Mirror]:
    """Items of ~count/50 customers over two years; most are on invoices (a few per invoice), ~4% are
    pending, ~1% deleted. A third share their second with others, as subscription renewals do."""
    customers = [stripe_id("cus_", rng) for _ in range(max(count // 50, 10))]
    rows: list[dict[str, Any]] = []
    invoices: list[str] = []
    ids: list[str] = []
    dates: list[int] = []
    current_invoice: dict[str, tuple[str, int]] = {}  # customer -> (invoice, items left on it)
    burst_second = START
    for n in range(count):
        customer = rng.choice(customers)
        if rng.random() < 0.33:
            if rng.random() < 0.1:
                burst_second = START + rng.randrange(SPAN)
            date = burst_second
        else:
            date = START + rng.randrange(SPAN)
        pending = rng.random() < 0.04
        invoice = None
        if not pending:
            held = current_invoice.get(customer)
            if held is None or held[1] == 0:
                held = (stripe_id("in_", rng), rng.randint(1, 6))
                invoices.append(held[0])
            invoice = held[0]
            current_invoice[customer] = (held[0], held[1] - 1)
        amount = rng.choice((500, 1000, 2500, 4900, 9900, 19900, -1500))
        item_id = stripe_id("ii_", rng)
        obj = {
            "amount": amount,
            "currency": "usd",
            "customer": customer,
            "date": date,
            "description": rng.choice(("Setup fee", "Seats", "Overage", "Proration", "Support plan")),
            "discountable": True,
            "discounts": [],
            "id": item_id,
            "invoice": invoice,
            "livemode": True,
            "metadata": {"order_id": str(n)},
            "object": "invoiceitem",
            "period": {"start": date, "end": date + 30 * 86_400},
            "proration": False,
            "quantity": 1,
            "tax_rates": [],
            "test_clock": None,
            "parent": None,
            "pricing": {
                "type": "price_details",
                "price_details": {"price": "price_1SxQ1aB7WZ01zgkWsetup", "product": "prod_TsetupFee01"},
                "unit_amount_decimal": str(amount),
            },
            "net_amount": amount,
            "customer_account": None,
            "quantity_decimal": "1",
        }
        row = item_columns(obj)
        deleted = rng.random() < 0.01
        row.update(
            id=item_id,
            deleted=deleted,
            deleted_by_event_id="evt_bench_del" if deleted else None,
            deleted_by_event_created=date + 60 if deleted else None,
            last_event_id=f"evt_bench_{n}",
            last_event_created=date + 1,
            version_precedence=0,
            version_tiebreak=0,
        )
        rows.append(row)
        ids.append(item_id)
        dates.append(date)
    return rows, Mirror(customers, invoices, ids, dates, [], [], [])


def build_payments(count: int, mirror: Mirror, rng: random.Random) -> list[dict[str, Any]]:
    rows = []
    for n in range(count):
        created = START + rng.randrange(SPAN)
        status = rng.choices(("paid", "open", "canceled"), weights=(90, 7, 3))[0]
        kind = rng.choices(("payment_intent", "payment_record", "charge"), weights=(85, 10, 5))[0]
        ref = stripe_id({"payment_intent": "pi_", "payment_record": "pr_", "charge": "ch_"}[kind], rng)
        invoice = rng.choice(mirror.invoices)
        payment_id = stripe_id("inpay_", rng)
        obj = {
            "amount_paid": 4900 if status == "paid" else None,
            "amount_requested": 4900,
            "created": created,
            "currency": "usd",
            "id": payment_id,
            "invoice": invoice,
            "is_default": True,
            "livemode": True,
            "object": "invoice_payment",
            "payment": {"type": kind, kind: ref},
            "status": status,
            "status_transitions": {
                "canceled_at": created + 60 if status == "canceled" else None,
                "paid_at": created + 60 if status == "paid" else None,
            },
        }
        row = payment_columns(obj)
        row.update(
            id=payment_id,
            last_event_id=f"evt_bench_p{n}",
            last_event_created=created + 61,
            version_precedence=1 if status != "open" else 0,
            version_tiebreak=0,
        )
        rows.append(row)
        mirror.payment_ids.append(payment_id)
        mirror.payment_invoices.append(invoice)
        if kind == "payment_intent":
            mirror.payment_intents.append(ref)
    return rows


# ---- loading ----------------------------------------------------------------------------------


def _db_value(value: Any) -> Any:
    return json_text(value) if isinstance(value, dict | list) else value


def load_sqlite(path: Path, table: str, rows: Sequence[dict[str, Any]]) -> None:
    columns = list(rows[0])
    quoted = ", ".join(f'"{name}"' for name in columns)
    sql = f"INSERT INTO {table} ({quoted}) VALUES ({', '.join('?' * len(columns))})"
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA synchronous=OFF")  # bulk load only; the service syncs every commit
    connection.execute("PRAGMA cache_size=-400000")  # 400 MB, so index inserts stay in memory
    with connection:
        for start in range(0, len(rows), 50_000):
            chunk = rows[start : start + 50_000]
            connection.executemany(sql, ([_db_value(row[name]) for name in columns] for row in chunk))
    connection.close()


def load_postgres(url: str, table: str, rows: Sequence[dict[str, Any]]) -> None:
    import psycopg

    columns = list(rows[0])
    quoted = ", ".join(f'"{name}"' for name in columns)
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn) as connection, connection.cursor() as cursor:
        with cursor.copy(f"COPY {table} ({quoted}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row([_db_value(row[name]) for name in columns])
        connection.commit()
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(f"VACUUM ANALYZE {table}")  # what autovacuum does after a large load


# ---- measuring --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    resource: Resource
    query: Callable[[random.Random], str]  # a query string, drawn at random for each request


def scenarios(mirror: Mirror) -> list[Scenario]:
    items, payments = invoice_items.RESOURCE, invoice_payments.RESOURCE

    def week(rng: random.Random) -> tuple[int, int]:
        start = START + rng.randrange(SPAN - 7 * 86_400)
        return start, start + 7 * 86_400

    def any_item(rng: random.Random) -> str:
        return rng.choice(mirror.item_ids)

    def customer_range(rng: random.Random) -> str:
        start, _ = week(rng)
        half_year = start + 180 * 86_400
        return f"customer={rng.choice(mirror.customers)}&created[gte]={start}&created[lt]={half_year}"

    def after_item(rng: random.Random) -> str:
        return f"starting_after={any_item(rng)}"

    def after_payment(rng: random.Random) -> str:
        return f"starting_after={rng.choice(mirror.payment_ids)}"

    return [
        Scenario("items: no filter, first page", items, lambda rng: "limit=100"),
        Scenario("items: starting_after (deep page)", items, lambda rng: f"limit=100&{after_item(rng)}"),
        Scenario(
            "items: ending_before (deep page)", items, lambda rng: f"limit=100&ending_before={any_item(rng)}"
        ),
        Scenario("items: customer", items, lambda rng: f"limit=100&customer={rng.choice(mirror.customers)}"),
        Scenario(
            "items: customer + pending=true",
            items,
            lambda rng: f"limit=100&pending=true&customer={rng.choice(mirror.customers)}",
        ),
        Scenario("items: customer + created range", items, lambda rng: "limit=100&" + customer_range(rng)),
        Scenario("items: pending=true", items, lambda rng: f"limit=100&pending=true&{after_item(rng)}"),
        Scenario("items: pending=false", items, lambda rng: f"limit=100&pending=false&{after_item(rng)}"),
        Scenario("items: invoice", items, lambda rng: f"limit=100&invoice={rng.choice(mirror.invoices)}"),
        Scenario(
            "items: created one week",
            items,
            lambda rng: "limit=100&created[gte]={}&created[lt]={}".format(*week(rng)),
        ),
        Scenario(
            "payments: no filter, starting_after", payments, lambda rng: f"limit=100&{after_payment(rng)}"
        ),
        Scenario(
            "payments: status=paid, starting_after",
            payments,
            lambda rng: f"limit=100&status=paid&{after_payment(rng)}",
        ),
        Scenario("payments: status=canceled", payments, lambda rng: "limit=100&status=canceled"),
        Scenario(
            "payments: invoice",
            payments,
            lambda rng: f"limit=100&invoice={rng.choice(mirror.payment_invoices)}",
        ),
        Scenario(
            "payments: payment[type]=payment_intent",
            payments,
            lambda rng: f"limit=100&payment[type]=payment_intent&{after_payment(rng)}",
        ),
        Scenario(
            "payments: payment[payment_intent]",
            payments,
            lambda rng: (
                "limit=100&payment[type]=payment_intent&payment[payment_intent]="
                + rng.choice(mirror.payment_intents)
            ),
        ),
        Scenario(
            "payments: created one week",
            payments,
            lambda rng: "limit=100&created[gte]={}&created[lt]={}".format(*week(rng)),
        ),
    ]


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.median(ordered), p99


def time_endpoint(client: TestClient, path: str, queries: list[str]) -> tuple[list[float], int]:
    samples, rows = [], 0
    for query in queries:
        began = time.perf_counter()
        response = client.get(f"{path}?{query}")
        samples.append((time.perf_counter() - began) * 1000)
        assert response.status_code == 200, response.text
        rows += len(response.json()["data"])
    return samples, rows


def time_query(engine: Engine, resource: Resource, queries: list[str]) -> list[float]:
    samples = []
    with engine.connect() as connection:
        for query in queries:
            request = parse_list_request(parse_query_string(query), resource.filters)
            began = time.perf_counter()
            resource.list_page(connection, request)
            connection.rollback()
            samples.append((time.perf_counter() - began) * 1000)
    return samples


def page_plan(engine: Engine, resource: Resource, queries: list[str]) -> str:
    """How the database reads the page: the index it uses, "+sort" if it sorts rows and, on PostgreSQL,
    the executor's own time for the page query (EXPLAIN ANALYZE, max over ``queries``)."""
    statements: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        statements.append((statement, parameters))

    executions: list[float] = []
    event.listen(engine, "before_cursor_execute", capture)
    try:
        with engine.connect() as connection:
            for query in queries:
                request = parse_list_request(parse_query_string(query), resource.filters)
                resource.list_page(connection, request)
                statement, parameters = statements[-1]  # the page query comes after any cursor lookup
                if engine.dialect.name == "sqlite":
                    rows = connection.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
                    details = " ".join(str(row[-1]) for row in rows)
                    indexes = re.findall(r"USING (?:COVERING )?INDEX (\w+)", details)
                    sorts = "TEMP B-TREE" in details
                    break
                analyzed: Any = connection.exec_driver_sql(
                    "EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters
                ).scalar_one()
                executions.append(float(analyzed[0]["Execution Time"]))
                text_plan = json.dumps(analyzed)
                indexes = re.findall(r'"Index Name": "(\w+)"', text_plan)
                sorts = '"Node Type": "Sort"' in text_plan
            connection.rollback()
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    used = ",".join(indexes) or "NO INDEX (scan)"
    executed = f" (db exec max {max(executions):.2f} ms)" if executions else ""
    return used + ("+sort" if sorts else "") + executed


def measure(url: str, mirror: Mirror, requests: int, seed: int) -> None:
    settings = Settings(database_url=url, webhook_secrets=("whsec_bench",), api_keys=(API_KEY,))
    engine = make_engine(url, for_writing=False)
    rng = random.Random(seed)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with TestClient(create_app(settings), headers=headers) as client:
        warm = [f"limit=100&starting_after={rng.choice(mirror.item_ids)}" for _ in range(50)]
        time_endpoint(client, "/v1/invoiceitems", warm)
        base_ids = [rng.choice(mirror.item_ids) for _ in range(requests)]
        base_samples = []
        for item_id in base_ids:
            began = time.perf_counter()
            client.get(f"/v1/invoiceitems/{item_id}")
            base_samples.append((time.perf_counter() - began) * 1000)
        base50, base99 = percentiles(base_samples)
        name = "baseline: retrieve one item by id"
        print(f"  {name:42} {base50:7.2f} {base99:7.2f}   1.0x        -       -")
        for scenario in scenarios(mirror):
            # Fresh random draws for each pass, so no pass reads pages another pass just cached.
            time_endpoint(client, scenario.resource.url, [scenario.query(rng) for _ in range(10)])
            samples, rows = time_endpoint(
                client, scenario.resource.url, [scenario.query(rng) for _ in range(requests)]
            )
            p50, p99 = percentiles(samples)
            direct = time_query(engine, scenario.resource, [scenario.query(rng) for _ in range(requests)])
            q50, q99 = percentiles(direct)
            plan = page_plan(engine, scenario.resource, [scenario.query(rng) for _ in range(20)])
            print(
                f"  {scenario.name:42} {p50:7.2f} {p99:7.2f} {p99 / base99:5.1f}x  {q50:7.2f} {q99:7.2f}"
                f"   {rows / requests:5.1f}  {plan}"
            )
            sys.stdout.flush()
    engine.dispose()


HEADER = (
    f"  {'scenario (100-row pages)':42} {'p50 ms':>7} {'p99 ms':>7} {'ratio':>6}  "
    f"{'query p50':>7} {'p99':>7}   rows/page  plan of the page query"
)


def load_note() -> str:
    """The machine may be shared: say how busy it was, since that moves the p99 figures."""
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} CPUs"


def run_backend(
    name: str,
    url: str,
    item_rows: list[dict[str, Any]],
    payment_rows: list[dict[str, Any]],
    mirror: Mirror,
    args: argparse.Namespace,
) -> None:
    upgrade(url)
    began = time.perf_counter()
    if name == "sqlite":
        path = Path(make_url(url).database or "")
        load_sqlite(path, table_of(InvoiceItem).name, item_rows)
        load_sqlite(path, table_of(InvoicePayment).name, payment_rows)
    else:
        load_postgres(url, table_of(InvoiceItem).name, item_rows)
        load_postgres(url, table_of(InvoicePayment).name, payment_rows)
    print(
        f"\n{name}: loaded {len(item_rows):,} items and {len(payment_rows):,} payments "
        f"in {time.perf_counter() - began:.0f} s; {args.requests} requests per scenario"
    )
    print(f"  before: {load_note()}")
    print(HEADER)
    measure(url, mirror, args.requests, args.seed)
    print(f"  after: {load_note()}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--payments", type=int, default=None, help="default: a tenth of --items")
    parser.add_argument("--requests", type=int, default=300, help="timed requests per scenario")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    began = time.perf_counter()
    item_rows, mirror = build_items(args.items, rng)
    payments = args.payments if args.payments is not None else args.items // 10
    payment_rows = build_payments(payments, mirror, rng)
    print(
        f"built {len(item_rows):,} items ({len(mirror.customers):,} customers, {len(mirror.invoices):,} "
        f"invoices) and {len(payment_rows):,} payments in {time.perf_counter() - began:.0f} s; "
        f"python {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version}"
    )
    for backend in args.backends.split(","):
        if backend == "sqlite":
            with tempfile.TemporaryDirectory(prefix="bm_bench_") as folder:
                run_backend("sqlite", f"sqlite:///{folder}/mirror.db", item_rows, payment_rows, mirror, args)
        elif backend == "postgresql":
            with temporary_pg_database("bm_bench", PG_ADMIN_URL) as url:
                run_backend("postgresql", normalize_url(url), item_rows, payment_rows, mirror, args)
        else:
            parser.error(f"unknown backend {backend!r}")


if __name__ == "__main__":
    main()
