"""GET /healthz: liveness plus what the writer has done, so load tests can see group commit at work."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from app.ingest.committer import Committer


async def healthz(request: Request) -> Response:
    committer: Committer = request.app.state.committer
    return JSONResponse(
        {"status": "ok", "writer": {**committer.stats.as_dict(), "commits": committer.commits}}
    )
