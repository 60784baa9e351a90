"""pytest plugin shipped with billing-mirror (entry point ``pytest11``: ``billing_mirror``).

Installing billing-mirror gives any test suite these fixtures:

- ``mirror``: the real application on a fresh, migrated SQLite file, wrapped in a Starlette
  TestClient; ``mirror.deliver(event)`` signs and posts one event, ``mirror.query(sql)`` reads
  the mirror, ``mirror.rows(table)`` dumps a table, ``mirror.dump()`` every table.
- ``signed_delivery(event, secret=None, timestamp=None)``: the body and headers Stripe would send.
- ``replay(path_or_events, direct=False)``: recorded events (a JSONL / JSON file, a directory, or a
  list of events) delivered to ``mirror`` over HTTP, or applied directly; returns the summary.
- ``mirror_secret``: the signing secret the mirror accepts (override the fixture to change it).

Signatures use ``time.time()`` when they are made and the endpoint checks them against
``time.time()`` when they arrive, so under freezegun both see the same frozen clock.
Nothing is imported from the application until a fixture is used.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from app.json_text import json_text
from app.webhook.logs import WEBHOOK_PATH

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from starlette.testclient import TestClient

    from app.recording.event_files import SourceItem
    from app.recording.replay import ReplaySummary

DEFAULT_SECRET = "whsec_billing_mirror_pytest"

EventLike = dict[str, Any] | str | bytes


def _body_of(event: EventLike) -> bytes:
    """A dict is serialized as compact JSON; str and bytes are sent exactly as given."""
    if isinstance(event, bytes):
        return event
    if isinstance(event, str):
        return event.encode("utf-8")
    return json_text(event).encode("utf-8")


@dataclass(frozen=True)
class Delivery:
    body: bytes
    headers: dict[str, str]


def make_delivery(event: EventLike, secret: str | list[str], timestamp: int | None = None) -> Delivery:
    from app.webhook.signature import sign_header

    body = _body_of(event)
    signed_at = int(time.time()) if timestamp is None else int(timestamp)
    return Delivery(
        body, {"Stripe-Signature": sign_header(body, secret, signed_at), "Content-Type": "application/json"}
    )


class Mirror:
    """A running billing-mirror (in process) on its own SQLite database."""

    def __init__(self, client: TestClient, database_url: str, secret: str, engine: Engine) -> None:
        self.client = client
        self.database_url = database_url
        self.secret = secret
        self.engine = engine

    def deliver(self, event: EventLike, *, timestamp: int | None = None, secret: str | None = None) -> Any:
        """Sign ``event`` (now, or at ``timestamp``) and POST it; returns the httpx response."""
        delivery = make_delivery(event, secret or self.secret, timestamp)
        return self.client.post(WEBHOOK_PATH, content=delivery.body, headers=delivery.headers)

    def query(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        """Run a read-only SQL query on the mirror; rows as dicts."""
        from sqlalchemy import text

        with self.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(text(sql), params)]

    def rows(self, table: str) -> list[dict[str, Any]]:
        """Every row of a mirror table (``invoice_payments``, ``invoice_items``, ``stripe_events``...)
        with typed values (JSON columns decoded, booleans as bool), sorted by primary key."""
        from app.testing.dump import rows

        return rows(self.engine, table)

    def dump(self) -> dict[str, list[dict[str, Any]]]:
        """Every table as ``rows`` reads it, keyed by table name, without ``stripe_events``'
        ``received_at`` and ``processed_at``: two mirrors holding the same data dump equal."""
        from app.testing.dump import dump

        return dump(self.engine)

    def event(self, event_id: str) -> dict[str, Any] | None:
        """The stored ``stripe_events`` row of one event."""
        found = self.query("SELECT * FROM stripe_events WHERE id = :event_id", event_id=event_id)
        return found[0] if found else None


def _items_of(source: str | Path | Iterable[Any]) -> Iterator[SourceItem]:
    from app.recording.event_files import SourceValue, iter_sources

    if isinstance(source, str | Path):
        yield from iter_sources([str(source)])
        return
    for index, entry in enumerate(source):
        if isinstance(entry, Path):
            yield from iter_sources([str(entry)])
            continue
        raw = _body_of(entry).decode("utf-8")
        yield SourceValue(json.loads(raw), raw, f"events[{index}]", exact=True)


@pytest.fixture
def mirror_secret() -> str:
    """The webhook signing secret of the ``mirror`` app."""
    return DEFAULT_SECRET


@pytest.fixture(scope="session")
def _billing_mirror_template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from app.db.migrate import upgrade

    path = tmp_path_factory.mktemp("billing_mirror_template") / "mirror.db"
    upgrade(f"sqlite:///{path}")  # migrated once per session, copied for each test
    return path


@pytest.fixture
def mirror(tmp_path: Path, _billing_mirror_template_db: Path, mirror_secret: str) -> Iterator[Mirror]:
    """billing-mirror's real application on a temporary, migrated SQLite database."""
    from starlette.testclient import TestClient

    from app.db.engine import make_engine
    from app.main import create_app
    from app.settings import Settings

    path = tmp_path / "billing_mirror.db"
    shutil.copyfile(_billing_mirror_template_db, path)
    url = f"sqlite:///{path}"
    engine = make_engine(url, for_writing=False)
    app = create_app(Settings(database_url=url, webhook_secrets=(mirror_secret,)))
    try:
        with TestClient(app) as client:
            yield Mirror(client, url, mirror_secret, engine)
    finally:
        engine.dispose()


@pytest.fixture
def signed_delivery(mirror_secret: str) -> Callable[..., Delivery]:
    """``signed_delivery(event, secret=None, timestamp=None) -> Delivery(body, headers)``.

    ``event`` is a dict (sent as compact JSON) or the exact str / bytes to send; the secret defaults
    to ``mirror_secret`` and the timestamp to now (``time.time()``, frozen under freezegun)."""

    def sign(
        event: EventLike, secret: str | list[str] | None = None, timestamp: int | None = None
    ) -> Delivery:
        return make_delivery(event, secret or mirror_secret, timestamp)

    return sign


@pytest.fixture
def replay(mirror: Mirror) -> Callable[..., ReplaySummary]:
    """``replay(path_or_events, direct=False) -> ReplaySummary`` into ``mirror``.

    A path (JSONL, a JSON event or list envelope, a directory) or a list of events (dicts, or the
    exact str / bytes bodies). Over HTTP each event is signed now and posted in order; with
    ``direct=True`` events are applied with the receiver's store and handlers, without HTTP."""

    def run(source: str | Path | Iterable[Any], *, direct: bool = False) -> ReplaySummary:
        from app.db.engine import make_engine
        from app.ingest.store import EventStore
        from app.recording.replay import replay_direct, replay_http

        items = _items_of(source)
        if not direct:
            return replay_http(items, mirror.client, WEBHOOK_PATH, mirror.secret, concurrency=1)
        engine = make_engine(mirror.database_url)
        try:
            return replay_direct(items, EventStore(engine))
        finally:
            engine.dispose()

    return run
