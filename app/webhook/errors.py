"""JSON error bodies: {"error": {"type": ..., "message": ...}}. Messages never carry secrets."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse


def error_response(
    status: int, error_type: str, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body = {"error": {"type": error_type, "message": message, **extra}}
    return JSONResponse(body, status_code=status, headers=headers)


async def http_exception_handler(_request: Request, exc: Exception) -> JSONResponse:
    status = getattr(exc, "status_code", 500)
    detail = getattr(exc, "detail", "") or "Error"
    kinds = {404: "not_found", 405: "method_not_allowed"}
    headers = getattr(exc, "headers", None)
    return error_response(status, kinds.get(status, "http_error"), str(detail), headers=headers)
