"""Helpers shared by the tests (and bench/): databases, signed deliveries, recorded events, mirror
contents and real servers."""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import strategies as st
from sqlalchemy import Engine, create_engine, delete, select, text
from sqlalchemy.engine import make_url
from sqlmodel import SQLModel
from starlette.testclient import TestClient

from app.db.engine import normalize_url
from app.db.models import InvoiceItem, StripeEvent, item_invoice, item_pending
from app.ingest.apply import IngestResult
from app.ingest.store import EventStore
from app.json_text import json_text
from app.mirror.dispatch import apply_event
from app.mirror.envelope import Event, event_from_json, parse_event
from app.mirror.outcome import Outcome
from app.mirror.writes import Writes
from app.testing.dump import Dump, dump, rows
from app.webhook.signature import sign_header

PROJECT_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures"
T0 = 1_767_225_600  # 2026-01-01 00:00:00 UTC

# ---- databases --------------------------------------------------------------------------------
# PostgreSQL is found at BILLING_MIRROR_TEST_PG (default: the local server, user postgres). Without it
# the PostgreSQL cases skip with the reason, except under CI=true, where they fail.

PG_ADMIN_URL = os.environ.get(
    "BILLING_MIRROR_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
# The marker lets `-m "not postgres"` run the SQLite half without ever reaching for PostgreSQL.
POSTGRESQL = pytest.param("postgresql", marks=pytest.mark.postgres)
BACKENDS = ("sqlite", POSTGRESQL)


def postgres_problem() -> str | None:
    """None when PostgreSQL answers, else why not."""
    try:
        engine = create_engine(normalize_url(PG_ADMIN_URL), connect_args={"connect_timeout": 3})
        with engine.connect() as connection:
            connection.execute(text("select 1"))
        engine.dispose()
        return None
    except Exception as exc:
        return f"PostgreSQL not reachable at {make_url(PG_ADMIN_URL).render_as_string()}: {exc}"


def require_postgres(problem: str | None) -> None:
    if problem is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true requires PostgreSQL. {problem}")
    pytest.skip(problem)


@contextmanager
def temporary_pg_database(prefix: str = "bm_test", admin_url: str = PG_ADMIN_URL) -> Iterator[str]:
    """CREATE a uniquely named database, yield its URL, DROP it afterwards (tests and benchmarks)."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(normalize_url(admin_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(normalize_url(admin_url)).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def copy_sqlite(template: Path, target: Path) -> str:
    shutil.copyfile(template, target)
    return f"sqlite:///{target}"


# ---- deliveries: real envelopes, our own HMAC (as stripe-python's tests do) -------------------

SECRET = "whsec_test_secret_for_billing_mirror"
API_VERSION = "2026-07-29.dahlia"
_counter = itertools.count(1)


def load_fixture(name: str) -> dict[str, Any]:
    """A recorded delivery (an event envelope) from tests/fixtures/."""
    return json.loads((FIXTURES / name).read_text())


def make_event(
    event_type: str,
    obj: dict[str, Any],
    *,
    event_id: str | None = None,
    created: int = T0,
    livemode: bool = False,
    previous_attributes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    data: dict[str, Any] = {"object": copy.deepcopy(obj)}
    if previous_attributes is not None:
        data["previous_attributes"] = previous_attributes
    return {
        "id": event_id or f"evt_test_{next(_counter):08d}",
        "object": "event",
        "api_version": API_VERSION,
        "created": created,
        "data": data,
        "livemode": livemode,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
    }


def encode(event: dict[str, Any]) -> bytes:
    return json_text(event).encode()


def signed_headers(body: bytes, timestamp: int, secret: str | list[str] = SECRET) -> dict[str, str]:
    return {"Stripe-Signature": sign_header(body, secret, timestamp), "Content-Type": "application/json"}


def deliver(client: TestClient, event: dict[str, Any]) -> Any:
    """POST ``event`` pretty-printed and signed now to the in-process app."""
    body = json.dumps(event, indent=2).encode()
    return client.post("/webhooks/stripe", content=body, headers=signed_headers(body, int(time.time())))


# ---- the recorded deliveries of the billing resources, under tests/fixtures/billing/ ----------

BILLING = FIXTURES / "billing"
# One recorded delivery per event type of the billing resources (plus a has_more variant).
EVENT_FIXTURES = sorted(
    path.name
    for path in BILLING.glob("*.json")
    if not path.name.startswith(("invoice_rendering", "invoice_lines"))
)
INVOICE_A = "in_1SyA10B7WZ01zgkWrnwlA001"
INVOICE_G = "in_1SyK10B7WZ01zgkWmanyG001"
METER = "mtr_test_61SyF10B7WZ01zgkW41Bx2yQ"


def recorded(name: str) -> dict[str, Any]:
    """A recorded billing delivery, e.g. recorded("invoice.paid")."""
    return load_fixture(f"billing/{name if name.endswith('.json') else name + '.json'}")


def snapshot_of(name: str) -> dict[str, Any]:
    return copy.deepcopy(recorded(name)["data"]["object"])


def fixture_path(name: str) -> Path:
    return BILLING / name


# ---- invoice payments and invoice items built from the recorded templates ---------------------

PAYMENT_TEMPLATE: dict[str, Any] = load_fixture("invoice_payment.paid.json")["data"]["object"]
ITEM_TEMPLATE: dict[str, Any] = load_fixture("invoiceitem.created.json")["data"]["object"]


def payment(
    payment_id: str,
    created: int,
    *,
    status: str = "paid",
    invoice: str = "in_A",
    kind: str = "payment_intent",
    ref: str | None = None,
    amount: int = 2000,
) -> dict[str, Any]:
    obj = copy.deepcopy(PAYMENT_TEMPLATE)
    paid = status == "paid"
    obj.update(
        id=payment_id,
        created=created,
        status=status,
        invoice=invoice,
        amount_requested=amount,
        amount_paid=amount if paid else None,
        payment={"type": kind, kind: ref or f"{kind[:2]}_{payment_id}"},
        status_transitions={
            "paid_at": created + 5 if paid else None,
            "canceled_at": created + 5 if status == "canceled" else None,
        },
    )
    return obj


def item(
    item_id: str,
    date: int,
    *,
    customer: str = "cus_A",
    invoice: str | None = None,
    amount: int = 1000,
    description: str = "Setup fee",
) -> dict[str, Any]:
    obj = copy.deepcopy(ITEM_TEMPLATE)
    obj.update(
        id=item_id,
        date=date,
        customer=customer,
        invoice=invoice,
        amount=amount,
        description=description,
        period={"start": date, "end": date},
    )
    return obj


def payment_event(obj: dict[str, Any]) -> dict[str, Any]:
    # Terminal payments arrive as invoice_payment.paid; open/canceled ones embedded in invoice events.
    if obj["status"] == "paid":
        return make_event("invoice_payment.paid", obj, created=obj["created"] + 10)
    embedded = {"object": "list", "data": [obj], "has_more": False, "url": "/v1/invoice_payments"}
    invoice = {"id": obj["invoice"], "object": "invoice", "payments": embedded}
    return make_event("invoice.updated", invoice, created=obj["created"] + 10)


def item_created(obj: dict[str, Any]) -> dict[str, Any]:
    return make_event("invoiceitem.created", obj, created=obj["date"] + 1)


def item_deleted(item_id: str, created: int) -> dict[str, Any]:
    stub = {"id": item_id, "object": "invoiceitem", "deleted": True}
    return make_event("invoiceitem.deleted", stub, created=created)


def item_event(item_id: str, created: int, event_id: str | None = None) -> Event:
    """A parsed invoiceitem.created event about ``item_id``."""
    obj = {**copy.deepcopy(ITEM_TEMPLATE), "id": item_id}
    return parse_event(encode(make_event("invoiceitem.created", obj, created=created, event_id=event_id)))


def events(prefix: str, count: int) -> list[Event]:
    """``count`` item events about as many items, ids ``evt_<prefix>_<n>``."""
    return [item_event(f"ii_{prefix}_{n}", 100 + n, event_id=f"evt_{prefix}_{n}") for n in range(count)]


# ---- filling the mirror the way production does: events through EventStore.ingest ------------


def ingest_each(engine: Engine, *events: dict[str, Any]) -> list[Outcome]:
    """Apply ``events`` in exactly this order, one transaction each (a batch would sort them)."""
    store = EventStore(engine)
    outcomes = []
    for event in events:
        [result] = store.ingest([parse_event(encode(event))])
        assert not isinstance(result, Exception), result
        assert result.error is None, result.error
        outcomes.append(result.outcome)
    return outcomes


def ingest_batch(engine: Engine, events: Iterable[dict[str, Any]]) -> list[IngestResult]:
    """Apply ``events`` as one batch; every one of them must be applied."""
    parsed = [event_from_json(event, encode(event).decode()) for event in events]
    results = EventStore(engine).ingest(parsed)
    for result in results:
        assert isinstance(result, IngestResult) and result.outcome == Outcome.APPLIED, result
    return [result for result in results if isinstance(result, IngestResult)]


def fails_for(*event_ids: str):  # type: ignore[no-untyped-def]
    """The real dispatcher, except that the handler of the named events raises (a bug in a handler)."""

    def apply(writes: Writes, event: Event) -> None:
        apply_event(writes, event)
        if event.id in event_ids:
            raise ValueError(f"handler bug on {event.id}")

    return apply


# ---- reading the mirror back ------------------------------------------------------------------


def one(engine: Engine, table_name: str, **where: Any) -> dict[str, Any]:
    found = rows(engine, table_name, **where)
    assert len(found) == 1, found
    return found[0]


def stored_event(engine: Engine, event_id: str) -> dict[str, Any] | None:
    found = rows(engine, StripeEvent.__tablename__, id=event_id)
    return found[0] if found else None


def stored(engine: Engine) -> dict[str, tuple[str, int, str | None]]:
    """(outcome, attempts, error) of every stored event, by event id."""
    with engine.connect() as connection:
        found = connection.execute(text("SELECT id, outcome, attempts, error FROM stripe_events"))
        return {row.id: (row.outcome, row.attempts, row.error) for row in found}


def items(engine: Engine) -> dict[str, str]:
    """The last event of every invoice item, by item id."""
    with engine.connect() as connection:
        return dict(connection.execute(text("SELECT id, last_event_id FROM invoice_items")).all())


def item_state(engine: Engine, item_id: str) -> tuple[str | None, bool]:
    """(invoice, pending) of an invoice item as a reader sees it."""
    query = select(item_invoice(), item_pending()).where(InvoiceItem.id == item_id)  # type: ignore[arg-type]
    with engine.connect() as connection:
        invoice, pending = connection.execute(query).one()
    return invoice, bool(pending)


def merge_applied_and_stale(mirror: Dump) -> Dump:
    """A copy where stripe_events.outcome no longer tells applied from stale.

    Whether one event found its rows newer (stale) or not (applied) depends on what came before it,
    so it differs between delivery orders although the mirror does not."""
    merged = dict(mirror)
    merged["stripe_events"] = [
        row | {"outcome": "applied|stale"} if row["outcome"] in ("applied", "stale") else row
        for row in mirror["stripe_events"]
    ]
    return merged


def reset(engine: Engine) -> None:
    """Empty every table, the mirror and stripe_events alike."""
    with engine.begin() as connection:
        for table in reversed(SQLModel.metadata.sorted_tables):
            connection.execute(delete(table))


def replay_in_batches(
    engine: Engine,
    pool: list[dict[str, Any]],
    order: list[int],
    batch_sizes: list[int],
    tables: tuple[str, ...],
) -> Dump:
    """From an empty database, ingest ``pool[i] for i in order`` in batches of the given sizes (the
    rest in one batch); every event must be stored without error. Returns the dump of ``tables``."""
    reset(engine)
    store = EventStore(engine)
    parsed = [parse_event(encode(pool[i])) for i in order]
    position, sizes = 0, iter(batch_sizes)
    while position < len(parsed):
        size = next(sizes, len(parsed))
        for result in store.ingest(parsed[position : position + size]):
            assert not isinstance(result, Exception) and result.error is None, result
        position += size
    mirror = dump(engine)
    return {name: mirror[name] for name in tables}


@st.composite
def deliveries(draw: st.DrawFn, pool_size: int) -> tuple[list[int], list[int]]:
    """Every event of a pool of ``pool_size`` once, in any order, plus up to 8 duplicates anywhere,
    and the batch sizes to split them into."""
    order = draw(st.permutations(range(pool_size)))
    for duplicate in draw(st.lists(st.integers(0, pool_size - 1), max_size=8)):
        order.insert(draw(st.integers(0, len(order))), duplicate)
    batch_sizes = draw(st.lists(st.integers(1, 6), max_size=len(order)))
    return order, batch_sizes


# ---- the read API -----------------------------------------------------------------------------

API_KEY = "bm_test_key_0123456789abcdef"
OTHER_API_KEY = "bm_test_second_key_fedcba9876543210"
BEARER = {"Authorization": f"Bearer {API_KEY}"}


def get(api: TestClient, path: str, **params: Any) -> Any:
    """GET through the read API, asserting a 200; the decoded JSON body."""
    response = api.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def ids(body: dict[str, Any]) -> list[str]:
    return [obj["id"] for obj in body["data"]]


def error_of(response: Any, status: int) -> dict[str, Any]:
    """Stripe's invalid_request_error object of a response with ``status``."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    return error  # type: ignore[no-any-return]


# ---- real servers -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _limit_open_files(soft: int, hard: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class LiveServer:
    """``billing-mirror serve`` in a subprocess on 127.0.0.1."""

    def __init__(
        self,
        database_url: str,
        workers: int = 1,
        extra_env: dict[str, str] | None = None,
        open_files: tuple[int, int] | None = None,
    ) -> None:
        """``open_files``: the server's (soft, hard) limits on open files."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "DATABASE_URL": database_url, "STRIPE_WEBHOOK_SECRET": SECRET}
        # Nobody reads the server's output until it stops: a line per delivery would fill the pipe.
        env["BILLING_MIRROR_LOG_LEVEL"] = "warning"
        env.update(extra_env or {})
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "app.cli.main",
                "serve",
                "--no-migrate",
                "--port",
                str(self.port),
                "--workers",
                str(workers),
            ],
            env=env,
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=None if open_files is None else lambda: _limit_open_files(*open_files),
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                output = self.process.stdout.read().decode() if self.process.stdout else ""
                raise RuntimeError(f"server exited early:\n{output}")
            try:
                httpx.get(f"{self.url}/webhooks/stripe", timeout=0.5)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("server did not start in time")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def blast(url: str, bodies: list[bytes], concurrency: int) -> list[int]:
    """POST every body, signed, with up to ``concurrency`` at once; the status codes in order."""
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        semaphore = asyncio.Semaphore(concurrency)

        async def send(body: bytes) -> int:
            async with semaphore:
                response = await client.post(
                    "/webhooks/stripe", content=body, headers=signed_headers(body, int(time.time()))
                )
                return response.status_code

        return await asyncio.gather(*(send(body) for body in bodies))


# ---- sync: billing-mirror against the Stripe-compatible test server (tests/stripe_server) -------


def sync_args(server_url: str, db_url: str, *extra: str) -> list[str]:
    """The options that aim a sync command at the test server and a mirror, with no rate limit to
    speak of (tests that measure the limiter set their own)."""
    from tests.stripe_server.app import API_KEY as STRIPE_TEST_KEY
    from tests.stripe_server.app import API_VERSION as STRIPE_TEST_VERSION

    return [
        *extra,
        "--api-key",
        STRIPE_TEST_KEY,
        "--api-base",
        server_url,
        "--api-version",
        STRIPE_TEST_VERSION,
        "--database-url",
        db_url,
        "--max-rps",
        "2000",
        "--max-endpoint-rps",
        "2000",
        "--no-migrate",
    ]


def run_cli(*args: str) -> Any:
    """``billing-mirror ARGS`` in process; the click Result."""
    from click.testing import CliRunner

    from app.cli.main import cli

    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def payloads(engine: Engine, table_name: str) -> dict[str, Any]:
    """The stored JSON of every row of a mirrored table, decoded, by id."""
    return {row["id"]: json.loads(row["payload"]) for row in rows(engine, table_name) if row["payload"]}
