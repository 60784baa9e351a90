"""POST /webhooks/stripe: HTTP only. Read the raw body, verify it, parse it, hand it over, answer."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from app.committer import GroupCommitter
from app.envelope import EnvelopeError, parse_event
from app.errors import error_response
from app.handlers.base import Outcome
from app.ingest import DatabaseUnavailable
from app.settings import HOW_TO_SET_SECRET, Settings
from app.signature import SignatureError, verify_signature


class BodyTooLarge(Exception):
    pass


async def read_body(request: Request, limit: int) -> bytes:
    """The body exactly as sent, refusing early when it exceeds ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


async def receive_stripe_webhook(request: Request) -> Response:
    settings: Settings = request.app.state.settings
    committer: GroupCommitter = request.app.state.committer
    if not settings.webhook_secrets:
        return error_response(503, "not_configured", HOW_TO_SET_SECRET)
    try:
        body = await read_body(request, settings.max_body_bytes)
    except BodyTooLarge:
        return error_response(
            413, "payload_too_large", f"Body exceeds the limit of {settings.max_body_bytes} bytes"
        )
    try:
        verify_signature(
            body,
            request.headers.get("stripe-signature"),
            settings.webhook_secrets,
            now=time.time(),
            tolerance=settings.tolerance_seconds,
        )
    except SignatureError as exc:
        return error_response(400, "signature_verification_error", exc.message, code=exc.problem.value)
    try:
        event = parse_event(body)
    except EnvelopeError as exc:
        return error_response(400, "invalid_request_error", exc.message, code=exc.kind)
    try:
        result = await committer.submit(event)
    except DatabaseUnavailable:
        return error_response(
            503,
            "database_unavailable",
            "The database is unavailable; the event was not stored. Stripe will retry.",
            headers={"Retry-After": "5"},
        )
    except Exception:
        return error_response(500, "internal_error", "The event could not be stored. Stripe will retry.")
    if result.outcome == Outcome.FAILED:
        return error_response(
            500,
            "handler_error",
            f"Event {event.id} is stored but could not be applied; it is applied again on retry.",
            event=event.id,
        )
    return JSONResponse(
        {"received": True, "id": event.id, "outcome": result.outcome.value, "duplicate": result.duplicate}
    )
