"""GET /healthz: liveness plus what the writer has done, so load tests can see group commit at work."""

from __future__ import annotations

from typing import Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response


class CountsCommits(Protocol):
    """What the health answer reads ``commits`` from: CommitCounter or SqliteCommitter."""

    @property
    def commits(self) -> int: ...


async def healthz(request: Request) -> Response:
    committer = request.app.state.committer
    commit_counter = request.app.state.commit_counter
    return JSONResponse(
        {"status": "ok", "writer": {**committer.stats.as_dict(), "commits": commit_counter.commits}}
    )
