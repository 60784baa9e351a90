"""Application factory. Nothing happens at import: the engine and the writer are built in the lifespan."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
from collections.abc import AsyncIterator, Callable

from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from app.db.engine import is_sqlite, make_engine, sqlite_path
from app.ingest.committer import Committer, GroupCommitter
from app.ingest.retrier import FailedEventRetrier
from app.ingest.sqlite_committer import SqliteCommitter
from app.ingest.store import EventStore
from app.inspect.pages import inspector_routes
from app.read.auth import HOW_TO_OPEN
from app.read.endpoints import api_routes
from app.settings import HOW_TO_SET_SECRET, Settings
from app.webhook.endpoint import receive_stripe_webhook
from app.webhook.errors import http_exception_handler
from app.webhook.health import healthz, readyz
from app.webhook.logs import WEBHOOK_PATH, flush_logs
from app.webhook.metrics import (
    ApiRequestMetrics,
    Metrics,
    metrics_endpoint,
    multiprocess_mode,
    serve_metrics_port,
)

logger = logging.getLogger("billing_mirror")

# Writer threads per process on PostgreSQL: a batch takes two round trips (app.mirror.pipelined_query), so
# more threads mostly fight the event loop for the GIL (bench/README.md).
POSTGRES_WRITERS = 1


def routes() -> list[BaseRoute]:
    return [
        Route(WEBHOOK_PATH, receive_stripe_webhook, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        *api_routes(),
        *inspector_routes(),
    ]


class MirrorApp(Starlette):
    """The application. A delivery (POST /webhooks/stripe) goes straight to its endpoint: the
    middleware (read API metrics, error pages) and the router do nothing for it but cost about 30 µs
    of the event loop's CPU a request (bench/README.md); every other request goes through them."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == WEBHOOK_PATH
            and scope["method"] == "POST"
            and not scope.get("root_path")
        ):
            scope["app"] = self
            await receive_stripe_webhook(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def api_route_names(app_routes: list[BaseRoute]) -> dict[object, str]:
    """Each read API endpoint and its path template: the route label of its request metrics."""
    return {
        route.endpoint: route.path
        for route in app_routes
        if isinstance(route, Route) and route.path.startswith("/v1")
    }


def committer_for(settings: Settings, engine: Engine) -> Committer:
    path = sqlite_path(settings.database_url)
    if path is not None:
        # On a SQLite file the writing gets a process, and so a core, of its own.
        return SqliteCommitter(path, engine.dialect, max_batch=settings.max_batch_size)
    # PostgreSQL writes in its own processes; an in-memory SQLite database only this process can open.
    writers = 1 if is_sqlite(settings.database_url) else POSTGRES_WRITERS
    return GroupCommitter(
        EventStore(engine),
        max_batch=settings.max_batch_size,
        writers=writers,
        batches_on_loop=settings.server_processes == 1,
    )


def _collect_garbage_less_often() -> tuple[int, int, int]:
    """Freeze what lives as long as the process and raise the collector's threshold; returns the
    thresholds to restore. Each delivery allocates a few hundred containers, nearly all freed by
    reference counting: at the default threshold the collector walked the requests in flight every
    few requests."""
    gc.collect()
    gc.freeze()
    thresholds = gc.get_threshold()
    gc.set_threshold(20_000, 50, 100)
    return thresholds


def create_app(settings: Settings | None = None) -> Starlette:
    resolved = settings if settings is not None else Settings.from_env()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if not resolved.webhook_secrets:
            logger.error(HOW_TO_SET_SECRET)
        if not resolved.api_keys:
            logger.warning(HOW_TO_OPEN)
        timeout = resolved.database_timeout_seconds
        engine = make_engine(resolved.database_url, timeout_seconds=timeout)
        read_engine = make_engine(resolved.database_url, for_writing=False, timeout_seconds=timeout)
        background = None
        if resolved.stripe_api_key:  # stripe-python and friends load only for a receiver that syncs
            from app.sync.background import BackgroundSync

            background = BackgroundSync(resolved, engine, metrics=metrics)
        stop_metrics_port: Callable[[], None] | None = None
        if resolved.metrics_port and not multiprocess_mode():
            # With several processes, serve's supervisor holds the metrics port (app.server).
            stop_metrics_port = serve_metrics_port(resolved.metrics_port, metrics, read_engine)
        try:
            async with committer_for(resolved, engine) as committer:
                app.state.engine = engine
                app.state.read_engine = read_engine
                app.state.committer = committer
                committer.on_batch = metrics.batch_stored
                app.state.background_sync = background
                thresholds = _collect_garbage_less_often()
                retrier = FailedEventRetrier(committer, read_engine, resolved.retry_seconds)
                app.state.retrier = retrier
                retrier.start()
                if background is not None:
                    background.start()
                try:
                    yield  # leaving the block, the committer answers every event already received
                finally:
                    await retrier.stop()
                    if background is not None:
                        background.stop()
                    gc.set_threshold(*thresholds)
        finally:
            flush_logs()
            if stop_metrics_port is not None:
                stop_metrics_port()
            if multiprocess_mode():  # its gauges' files go; its counts stay in the sums
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
            engine.dispose()
            read_engine.dispose()

    metrics = Metrics()
    app_routes = routes()
    app = MirrorApp(
        routes=app_routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_exception_handler},
        middleware=[Middleware(ApiRequestMetrics, metrics=metrics, routes=api_route_names(app_routes))],
    )
    app.state.settings = resolved
    app.state.metrics = metrics
    return app
