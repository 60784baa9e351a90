"""POST /webhooks/stripe: HTTP only. Read the raw body, verify it, parse it, hand it over, answer.

A plain ASGI endpoint rather than a Starlette request/response function: every delivery passes here,
and Starlette's Request and JSONResponse wrappers cost more CPU than the verification itself. The
route still comes from Starlette (405 with Allow for other methods), and errors keep their JSON bodies.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from app.ingest.apply import DatabaseUnavailable
from app.ingest.committer import Committer
from app.mirror.envelope import EnvelopeError, parse_event
from app.mirror.outcome import Outcome
from app.settings import HOW_TO_SET_SECRET, Settings
from app.webhook.errors import error_response
from app.webhook.signature import SignatureError, verify_signature

JSON_HEADERS = (b"content-type", b"application/json")


class BodyTooLarge(Exception):
    pass


class ClientGone(Exception):
    """The client disconnected before sending its whole body: nobody is left to answer."""


def header_values(scope: Scope) -> tuple[str | None, str | None]:
    """(Content-Length, Stripe-Signature): the first of each, decoded as Starlette does (latin-1)."""
    length: str | None = None
    signature: str | None = None
    for name, value in scope["headers"]:
        if length is None and name == b"content-length":
            length = value.decode("latin-1")
        elif signature is None and name == b"stripe-signature":
            signature = value.decode("latin-1")
    return length, signature


async def read_body(receive: Receive, declared: str | None, limit: int) -> bytes:
    """The body exactly as sent, refusing early when it exceeds ``limit`` bytes."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def send_json(send: Send, status: int, content: dict[str, Any]) -> None:
    body = orjson.dumps(content)
    headers = [(b"content-length", str(len(body)).encode("latin-1")), JSON_HEADERS]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class StripeWebhookEndpoint:
    """The ASGI app behind the route; settings and the committer come from the application state."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope["app"].state
        settings: Settings = state.settings
        committer: Committer = state.committer
        if not settings.webhook_secrets:
            return await error_response(503, "not_configured", HOW_TO_SET_SECRET)(scope, receive, send)
        declared, signature = header_values(scope)
        try:
            body = await read_body(receive, declared, settings.max_body_bytes)
        except BodyTooLarge:
            limit = settings.max_body_bytes
            response = error_response(413, "payload_too_large", f"Body exceeds the limit of {limit} bytes")
            return await response(scope, receive, send)
        except ClientGone:
            return None
        try:
            verify_signature(
                body,
                signature,
                settings.webhook_secrets,
                now=time.time(),
                tolerance=settings.tolerance_seconds,
            )
        except SignatureError as exc:
            response = error_response(
                400, "signature_verification_error", exc.message, code=exc.problem.value
            )
            return await response(scope, receive, send)
        try:
            event = parse_event(body)
        except EnvelopeError as exc:
            response = error_response(400, "invalid_request_error", exc.message, code=exc.kind)
            return await response(scope, receive, send)
        try:
            result = await committer.submit(event)
        except DatabaseUnavailable:
            response = error_response(
                503,
                "database_unavailable",
                "The database is unavailable; the event was not stored. Stripe will retry.",
                headers={"Retry-After": "5"},
            )
            return await response(scope, receive, send)
        except Exception:
            response = error_response(
                500, "internal_error", "The event could not be stored. Stripe will retry."
            )
            return await response(scope, receive, send)
        if result.outcome == Outcome.FAILED:
            response = error_response(
                500,
                "handler_error",
                f"Event {event.id} is stored but could not be applied; it is applied again on retry.",
                event=event.id,
            )
            return await response(scope, receive, send)
        content = {
            "received": True,
            "id": event.id,
            "outcome": result.outcome.value,
            "duplicate": result.duplicate,
        }
        return await send_json(send, 200, content)


receive_stripe_webhook = StripeWebhookEndpoint()
