"""GET /healthz: the process is alive (and what the writer has done, so load tests can see group commit
at work); GET /readyz: deliveries can be stored now (the database answers and the writer works)."""

from __future__ import annotations

import asyncio

from sqlalchemy import Engine, text
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from app.ingest.committer import Committer
from app.settings import Settings


async def healthz(request: Request) -> Response:
    committer: Committer = request.app.state.committer
    return JSONResponse(
        {"status": "ok", "writer": {**committer.stats.as_dict(), "commits": committer.commits}}
    )


def _database_answers(engine: Engine) -> None:
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))


async def readyz(request: Request) -> Response:
    """503 with the reason while the writer or the database does not work: a probe takes the
    receiver out of rotation instead of letting Stripe's deliveries wait for a deadline."""
    committer: Committer = request.app.state.committer
    settings: Settings = request.app.state.settings
    problem = committer.unavailable()
    if problem is None:
        check = asyncio.to_thread(_database_answers, request.app.state.read_engine)
        try:
            await asyncio.wait_for(check, settings.database_timeout_seconds)
        except TimeoutError:
            problem = f"the database did not answer within {settings.database_timeout_seconds} s"
        except Exception as exc:
            problem = f"the database does not answer: {type(exc).__name__}"
    if problem is not None:
        return JSONResponse({"status": "unavailable", "reason": problem}, status_code=503)
    return JSONResponse({"status": "ready"})
