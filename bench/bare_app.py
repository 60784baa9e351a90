"""The baseline: a bare Starlette POST endpoint that reads the body and answers 200 JSON, nothing else."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


async def receive(request: Request) -> Response:
    body = await request.body()
    return JSONResponse({"received": True, "bytes": len(body)})


async def healthz(_request: Request) -> Response:
    return JSONResponse({"status": "ok"})


app = Starlette(
    routes=[
        Route("/webhooks/stripe", receive, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
)
