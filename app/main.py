"""Application factory. Nothing happens at import: the engine and the writer are built in the lifespan."""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Route

from app.db.engine import CommitCounter, is_sqlite, make_engine, sqlite_path
from app.ingest.committer import GroupCommitter
from app.ingest.sqlite_committer import SqliteCommitter
from app.ingest.store import EventStore
from app.read.auth import HOW_TO_OPEN
from app.read.endpoints import api_routes
from app.settings import HOW_TO_SET_SECRET, Settings
from app.webhook.endpoint import receive_stripe_webhook
from app.webhook.errors import http_exception_handler
from app.webhook.health import healthz

logger = logging.getLogger("billing_mirror")

# Writer threads per process on PostgreSQL. Since a batch's writes take one round trip (a pipeline),
# more threads mostly fight the event loop for the GIL: under the webhook benchmark one did 2,500
# events/s, two 2,300-2,400 and four 2,050-2,120 (with 2 server processes: 2,850 against 2,190).
# A SQLite file needs none: its SqliteCommitter works on the event loop.
POSTGRES_WRITERS = 1


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
        path = sqlite_path(resolved.database_url)
        committer: SqliteCommitter | GroupCommitter
        if path is not None:
            # On a SQLite file the writing gets a process, and so a core, of its own.
            committer = SqliteCommitter(path, engine.dialect, max_batch=resolved.max_batch_size)
            await committer.start()
            app.state.commit_counter = committer
        else:
            # PostgreSQL writes in its own processes; an in-memory SQLite database only this process
            # can open.
            writers = 1 if is_sqlite(resolved.database_url) else POSTGRES_WRITERS
            committer = GroupCommitter(EventStore(engine), max_batch=resolved.max_batch_size, writers=writers)
            committer.start()
            app.state.commit_counter = CommitCounter(engine)
        # Everything built so far lives as long as the process: keep it out of the cyclic GC's
        # scans, which otherwise walk every module and compiled statement many times a second.
        gc.collect()
        gc.freeze()
        # Each delivery allocates a few hundred containers (its parsed body, its plan), nearly all
        # freed by reference counting. At the default threshold (700) the collector ran every few
        # requests and walked the ones in flight each time: 10 % of the server's CPU under load.
        thresholds = gc.get_threshold()
        gc.set_threshold(20_000, 50, 100)
        app.state.engine = engine
        app.state.read_engine = read_engine
        app.state.committer = committer
        try:
            yield
        finally:
            # Answers every event already received.
            if isinstance(committer, SqliteCommitter):
                await committer.stop()
            else:
                committer.stop()
            engine.dispose()
            read_engine.dispose()
            gc.set_threshold(*thresholds)

    app = Starlette(
        routes=routes(),
        lifespan=lifespan,
        exception_handlers={HTTPException: http_exception_handler},
    )
    app.state.settings = resolved
    return app
