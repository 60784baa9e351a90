"""Application factory. Nothing happens at import: the engine and the writer are built in the lifespan."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Route

from app.api.auth import HOW_TO_OPEN
from app.api.endpoints import api_routes
from app.committer import GroupCommitter
from app.db import make_engine
from app.errors import http_exception_handler
from app.ingest import EventStore
from app.settings import HOW_TO_SET_SECRET, Settings
from app.webhook import receive_stripe_webhook

logger = logging.getLogger("billing_mirror")


def routes() -> list[BaseRoute]:
    return [Route("/webhooks/stripe", receive_stripe_webhook, methods=["POST"]), *api_routes()]


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
        committer = GroupCommitter(EventStore(engine), max_batch=resolved.max_batch_size)
        committer.start()
        app.state.engine = engine
        app.state.read_engine = read_engine
        app.state.committer = committer
        try:
            yield
        finally:
            committer.stop()
            engine.dispose()
            read_engine.dispose()

    app = Starlette(
        routes=routes(),
        lifespan=lifespan,
        exception_handlers={HTTPException: http_exception_handler},
    )
    app.state.settings = resolved
    return app
