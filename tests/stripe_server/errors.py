"""Stripe's error object, raised anywhere in the server and rendered once by the app."""

from __future__ import annotations

from typing import Any

import orjson


class ApiError(Exception):
    """An error answer: HTTP status, Stripe's error object and any extra headers."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.code = code
        self.param = param
        self.headers = dict(headers or {})

    def body(self, request_id: str) -> bytes:
        error: dict[str, Any] = {"type": self.error_type, "message": self.message}
        if self.code is not None:
            error["code"] = self.code
            error["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
        if self.param is not None:
            error["param"] = self.param
        error["request_log_url"] = f"https://dashboard.stripe.com/test/logs/{request_id}"
        return orjson.dumps({"error": error})


def resource_missing(object_name: str, object_id: str, *, param: str | None = None) -> ApiError:
    """Stripe's "No such ..." error: 404 for a retrieve, 400 with ``param`` for a cursor."""
    return ApiError(
        400 if param else 404,
        f"No such {object_name}: '{object_id}'",
        code="resource_missing",
        param=param,
    )
