"""GET /metrics: Prometheus's text format, from prometheus-client.

Counted where it happens (one ``Metrics`` per application, its own registry, built in create_app, so
nothing is registered twice and nothing happens at import): deliveries by type and outcome, signature
verification failures by reason, the time a delivery waits for its commit, the writer's batches and
commits, background sync rounds and what they read, read API requests by route and status.

Read from the database at scrape time (``MirrorCollector``, a few index lookups): failed events
outstanding and the age of the oldest, the mirror's lag behind Stripe (now minus ``created`` of the
newest applied event), and where each sync and the catch-up stand (``sync_state``).

With several server processes (``serve --workers N``) ``serve`` points PROMETHEUS_MULTIPROC_DIR at a
fresh directory before the workers start: every process then writes its counts to files there, and a
scrape, whichever process answers it, sums them (prometheus-client's multi-process mode).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import Engine, text
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
# Seconds a delivery waits for its commit: group commit makes a few milliseconds the norm.
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
REALM = 'Basic realm="billing-mirror metrics"'


def multiprocess_mode() -> bool:
    return bool(os.environ.get(MULTIPROCESS_DIR))


class Metrics:
    """The counters and histograms of one application (one server process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.deliveries = Counter(
            "billing_mirror_deliveries",
            "Verified deliveries stored, by event type and outcome (applied, stale, ignored, failed,"
            " refused; duplicate deliveries count with the outcome of the stored event).",
            ["type", "outcome"],
            registry=registry,
        )
        self.duplicates = Counter(
            "billing_mirror_duplicate_deliveries",
            "Deliveries of an event already stored (not applied twice).",
            registry=registry,
        )
        self.unavailable = Counter(
            "billing_mirror_deliveries_unavailable",
            "Deliveries answered 503 or 500 because the database did not store them.",
            registry=registry,
        )
        self.verification_failures = Counter(
            "billing_mirror_verification_failures",
            "Webhook requests refused 400 by signature verification, by reason.",
            ["reason"],
            registry=registry,
        )
        self.commit_seconds = Histogram(
            "billing_mirror_commit_seconds",
            "Seconds from a verified delivery's hand-over to the writer until its transaction committed.",
            buckets=COMMIT_BUCKETS,
            registry=registry,
        )
        self.batch_events = Histogram(
            "billing_mirror_batch_events",
            "Events per batch the writer stored (group commit).",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.committed_events = Counter(
            "billing_mirror_committed_events",
            "Events (and dead letters) the writer stored.",
            registry=registry,
        )
        self.commits = Counter(
            "billing_mirror_commits", "Transactions the writer committed.", registry=registry
        )
        self.sync_rounds = Counter(
            "billing_mirror_sync_rounds",
            "Background sync rounds of serve, by kind (catch-up, refresh) and result (done, skipped:"
            " another receiver held the lock, failed).",
            ["kind", "result"],
            registry=registry,
        )
        self.sync_events = Counter(
            "billing_mirror_sync_events",
            "Events and snapshots the background sync stored, by kind and outcome.",
            ["kind", "outcome"],
            registry=registry,
        )
        self.api_requests = Counter(
            "billing_mirror_api_requests",
            "Read API requests, by route (e.g. /v1/invoices/{object_id}) and status.",
            ["route", "status"],
            registry=registry,
        )
        self._commits_lock = threading.Lock()
        self._commits_seen = 0

    def delivered(self, event_type: str, outcome: str, duplicate: bool, seconds: float) -> None:
        self.deliveries.labels(event_type, outcome).inc()
        if duplicate:
            self.duplicates.inc()
        self.commit_seconds.observe(seconds)

    def batch_stored(self, events: int, commits_so_far: int) -> None:
        """A committer's hook: a batch of ``events`` was stored; its writer has committed
        ``commits_so_far`` transactions (a new SQLite writer process counts from 0 again)."""
        self.batch_events.observe(events)
        self.committed_events.inc(events)
        with self._commits_lock:
            added = (
                commits_so_far - self._commits_seen
                if commits_so_far >= self._commits_seen
                else commits_so_far
            )
            self._commits_seen = commits_so_far
        if added > 0:
            self.commits.inc(added)

    def sync_round(self, kind: str, result: str) -> None:
        self.sync_rounds.labels(kind, result).inc()

    def sync_stored(self, kind: str, counts: Mapping[str, int]) -> None:
        for outcome, number in counts.items():
            if number:
                self.sync_events.labels(kind, outcome).inc(number)


# ---- read from the database at scrape time ---------------------------------------------------------


def _newest_applied_sql(dialect: str) -> str:
    """The newest applied event's ``created``, walking the ``created`` index from its end (SQLite
    would otherwise pick the ``outcome`` index and read every applied event)."""
    hint = " INDEXED BY ix_stripe_events_created" if dialect == "sqlite" else ""
    return f"SELECT created FROM stripe_events{hint} WHERE outcome = 'applied' ORDER BY created DESC LIMIT 1"


FAILED_SQL = "SELECT count(*), min(received_at) FROM stripe_events WHERE outcome = 'failed'"
SYNC_STATE_SQL = "SELECT account, resource, finished_at, objects, watermark FROM sync_state"


def _seconds(moment: Any) -> float | None:
    """Unix seconds of a stored timestamp (SQLite returns text or a naive datetime in UTC)."""
    if moment is None:
        return None
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    if isinstance(moment, datetime):
        aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
        return aware.timestamp()
    return float(moment)


class MirrorCollector:
    """Gauges read from the database when scraped (a few index lookups and the small sync_state)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        now = time.time()
        failed = GaugeMetricFamily(
            "billing_mirror_failed_events",
            "Stored events whose outcome is failed (applied again with back-off).",
        )
        oldest = GaugeMetricFamily(
            "billing_mirror_oldest_failed_event_age_seconds",
            "Seconds since the oldest failed event was received (0 when none is failed).",
        )
        lag = GaugeMetricFamily(
            "billing_mirror_lag_seconds",
            "Now minus the created time of the newest applied event: how far behind Stripe the mirror is.",
        )
        up = GaugeMetricFamily("billing_mirror_database_up", "1 when the database answered this scrape.")
        finished = GaugeMetricFamily(
            "billing_mirror_sync_finished_timestamp_seconds",
            "When the last backfill of each resource finished (Stripe's clock).",
            labels=["account", "resource"],
        )
        objects = GaugeMetricFamily(
            "billing_mirror_sync_objects",
            "Objects the backfill under way (or the last one) of each resource read.",
            labels=["account", "resource"],
        )
        watermark = GaugeMetricFamily(
            "billing_mirror_catch_up_watermark_timestamp_seconds",
            "Every event created before this time was read from Stripe's Events API.",
            labels=["account"],
        )
        try:
            with self.engine.connect() as connection:
                count, oldest_received = connection.execute(text(FAILED_SQL)).one()
                newest = connection.execute(text(_newest_applied_sql(self.engine.dialect.name))).scalar()
                states = connection.execute(text(SYNC_STATE_SQL)).all()
        except Exception:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        failed.add_metric([], int(count))
        received = _seconds(oldest_received)
        oldest.add_metric([], max(0.0, now - received) if received is not None else 0.0)
        yield up
        yield failed
        yield oldest
        if newest is not None:
            lag.add_metric([], max(0.0, now - int(newest)))
            yield lag
        for account, resource, finished_at, count_read, mark in states:
            if resource == "events":
                if mark is not None:
                    watermark.add_metric([account or ""], float(mark))
                continue
            objects.add_metric([account or "", resource], float(count_read or 0))
            if finished_at is not None:
                finished.add_metric([account or "", resource], float(finished_at))
        yield objects
        yield finished
        yield watermark


class _Scrape:
    """What one scrape shows: the counts (this process's, or every process's in multi-process mode),
    the gauges read from the database, and events per commit derived from the counts."""

    def __init__(self, counted: Iterable[Any], database: MirrorCollector | None) -> None:
        self.counted = counted
        self.database = database

    def collect(self) -> Iterator[Metric]:
        totals = {"billing_mirror_committed_events": 0.0, "billing_mirror_commits": 0.0}
        for source in self.counted:
            for family in source.collect():
                if family.name in totals:
                    totals[family.name] = sum(s.value for s in family.samples if s.name.endswith("_total"))
                yield family
        per_commit = GaugeMetricFamily(
            "billing_mirror_events_per_commit",
            "Events stored per committed transaction since the server started (group commit).",
        )
        commits = totals["billing_mirror_commits"]
        per_commit.add_metric([], totals["billing_mirror_committed_events"] / commits if commits else 0.0)
        yield per_commit
        if self.database is not None:
            yield from self.database.collect()


def scrape_source(metrics: Metrics | None, engine: Engine | None) -> _Scrape:
    """A registry-like object (``collect()``) for generate_latest or prometheus-client's own server."""
    database = MirrorCollector(engine) if engine is not None else None
    if multiprocess_mode():
        from prometheus_client.multiprocess import MultiProcessCollector

        merged = CollectorRegistry()
        MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
        return _Scrape([merged], database)
    return _Scrape([metrics.registry] if metrics is not None else [], database)


def render(metrics: Metrics, engine: Engine | None) -> bytes:
    return generate_latest(scrape_source(metrics, engine))


# ---- who may scrape ----------------------------------------------------------------------------


def _presented_key(authorization: str | None) -> str | None:
    """The key of ``Bearer KEY``, or of HTTP Basic as Prometheus sends it: the key as the password
    (any user name), or as the user name with no password (as the read API takes it)."""
    if not authorization:
        return None
    scheme, _, credentials = authorization.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer":
        return credentials or None
    if scheme.lower() == "basic" and credentials:
        try:
            decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, _, password = decoded.partition(":")
        return password or user or None
    return None


def key_allowed(authorization: str | None, keys: Sequence[str]) -> bool:
    """Constant time per configured key, every key compared."""
    key = _presented_key(authorization)
    if key is None or not keys:
        return False
    given = key.encode()
    matched = False
    for candidate in keys:
        matched |= hmac.compare_digest(given, candidate.encode())
    return matched


def _unauthorized(message: str) -> Response:
    body = {"error": {"type": "invalid_request_error", "message": message}}
    return JSONResponse(body, status_code=401, headers={"WWW-Authenticate": REALM})


async def metrics_endpoint(request: Request) -> Response:
    """GET /metrics on the main port: for a read API key (BILLING_MIRROR_API_KEYS)."""
    state = request.app.state
    keys: Sequence[str] = state.settings.api_keys
    if not keys:
        return _unauthorized(
            "GET /metrics is closed: set BILLING_MIRROR_API_KEYS and send a key as 'Authorization: Bearer"
            " <key>' or as the HTTP Basic password, or scrape --metrics-port on 127.0.0.1."
        )
    if not key_allowed(request.headers.get("authorization"), keys):
        return _unauthorized(
            "Send a read API key as 'Authorization: Bearer <key>' or as the HTTP Basic password."
        )
    engine: Engine | None = getattr(state, "read_engine", None)
    body = await asyncio.to_thread(render, state.metrics, engine)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def serve_metrics_port(port: int, metrics: Metrics | None, engine: Engine | None) -> Callable[[], None]:
    """GET /metrics, without a key, on 127.0.0.1:``port`` (prometheus-client's own server, on a
    thread); returns what stops it."""
    from prometheus_client import start_http_server

    server, thread = start_http_server(port, addr="127.0.0.1", registry=scrape_source(metrics, engine))

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop


# ---- read API requests -------------------------------------------------------------------------


class ApiRequestMetrics:
    """ASGI middleware: counts each request under /v1 by the route it matched (its path template, so
    ids do not make new series) and the status answered."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Mapping[Any, str]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes  # endpoint object -> path template

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1"):
            return await self.app(scope, receive, send)
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = self.routes.get(scope.get("endpoint"), "other")
            self.metrics.api_requests.labels(route, str(status)).inc()
