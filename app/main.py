"""Application factory. Nothing happens at import: the engine and the writer are built in the lifespan."""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Route

from app.api.auth import HOW_TO_OPEN
from app.api.endpoints import api_routes
from app.committer import GroupCommitter
from app.db import CommitCounter, is_sqlite, make_engine
from app.errors import http_exception_handler
from app.health import CountsCommits, healthz
from app.ingest import WriterProcessStore, event_store_for
from app.settings import HOW_TO_SET_SECRET, Settings
from app.webhook import receive_stripe_webhook

logger = logging.getLogger("billing_mirror")

# Writer threads per process. On SQLite the writing happens in a SqliteWriterProcess, which takes
# one batch at a time: two threads let one batch be planned while the other is written. On PostgreSQL
# a few overlap their round trips (each holds one pooled connection of the 10).
SQLITE_WRITERS = 2
POSTGRES_WRITERS = 4


def routes() -> list[BaseRoute]:
    return [
        Route("/webhooks/stripe", receive_stripe_webhook, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        *api_routes(),
    ]


def create_app(settings: Settings | None = None) -> Starlette:
    resolved = settings if settings is not None else Settings.from_env()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if not resolved.webhook_secrets:
            logger.error(HOW_TO_SET_SECRET)
        if not resolved.api_keys:
            logger.warning(HOW_TO_OPEN)
        engine = make_engine(resolved.database_url)
        read_engine = make_engine(resolved.database_url, for_writing=False)
        resources = contextlib.ExitStack()
        # On a SQLite file the writing gets a process, and so a core, of its own.
        store = resources.enter_context(event_store_for(engine, resolved.database_url))
        commits_of: CountsCommits
        if isinstance(store, WriterProcessStore):
            writers, commits_of = SQLITE_WRITERS, store.writer
        else:
            writers = 1 if is_sqlite(resolved.database_url) else POSTGRES_WRITERS
            commits_of = CommitCounter(engine)
        committer = GroupCommitter(store, max_batch=resolved.max_batch_size, writers=writers)
        committer.start()
        # Everything built so far lives as long as the process: keep it out of the cyclic GC's
        # scans, which otherwise walk every module and compiled statement many times a second.
        gc.collect()
        gc.freeze()
        app.state.engine = engine
        app.state.read_engine = read_engine
        app.state.committer = committer
        app.state.commit_counter = commits_of
        try:
            yield
        finally:
            committer.stop()  # answers every event already received
            resources.close()
            engine.dispose()
            read_engine.dispose()

    app = Starlette(
        routes=routes(),
        lifespan=lifespan,
        exception_handlers={HTTPException: http_exception_handler},
    )
    app.state.settings = resolved
    return app
