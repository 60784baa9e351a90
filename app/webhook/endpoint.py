"""POST /webhooks/stripe: HTTP only. Read the raw body, verify it, parse it, hand it over, answer.

A plain ASGI endpoint rather than a Starlette request/response function: every delivery passes here,
and Starlette's Request and JSONResponse wrappers cost more CPU than the verification itself. The
route still comes from Starlette (405 with Allow for other methods), and errors keep their JSON bodies.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from app.ingest.apply import DatabaseUnavailable, IngestResult, NotStored
from app.ingest.committer import Committer
from app.mirror.envelope import EnvelopeError, parse_event
from app.mirror.outcome import Outcome
from app.settings import HOW_TO_SET_SECRET, Settings
from app.webhook.errors import error_response
from app.webhook.logs import ThrottledWarning, log_fast
from app.webhook.metrics import Metrics
from app.webhook.signature import SignatureError, verify_signature

JSON_HEADERS = (b"content-type", b"application/json")
logger = logging.getLogger("billing_mirror.webhook")
# One line per delivery, at info: ids, type, outcome and time to commit, never the body or a header.
DELIVERY_LINE = "delivery %s type=%s object=%s outcome=%s duplicate=%s commit_ms=%.1f"
REJECTED_LINE = "delivery rejected: %s"


unavailable_log = ThrottledWarning(
    logger, "Deliveries answered 503: %s (%d since the previous such line)", level=logging.ERROR
)


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
            metrics: Metrics | None = getattr(state, "metrics", None)
            if metrics is not None:
                metrics.verification_failures.labels(exc.problem.value).inc()
            logger.info(
                REJECTED_LINE, exc.problem.value, extra={"outcome": "rejected", "reason": exc.problem.value}
            )
            response = error_response(
                400, "signature_verification_error", exc.message, code=exc.problem.value
            )
            return await response(scope, receive, send)
        timeout = settings.database_timeout_seconds
        try:
            event = parse_event(body)
        except EnvelopeError as exc:
            refusal = committer.refuse(body, exc.kind, exc.message)
            return await answer(scope, receive, send, settings, refusal, timeout, None, exc.kind)
        storing = committer.submit(event)
        return await answer(
            scope,
            receive,
            send,
            settings,
            storing,
            timeout,
            event.id,
            "unstorable",
            event.type,
            event.object_id,
        )


def _observe(
    scope: Scope,
    result: IngestResult,
    event_type: str | None,
    object_id: str | None,
    seconds: float,
) -> None:
    """The delivery's line and metrics, once it is stored (in ``seconds``)."""
    outcome = result.outcome.value
    metrics: Metrics | None = getattr(scope["app"].state, "metrics", None)
    if metrics is not None:
        metrics.delivered(event_type or "", outcome, result.duplicate, seconds)
    if logger.isEnabledFor(logging.INFO):
        milliseconds = round(seconds * 1000, 3)
        log_fast(
            logger,
            logging.INFO,
            DELIVERY_LINE,
            (
                result.event_id or "-",
                event_type or "-",
                object_id or "-",
                outcome,
                "true" if result.duplicate else "false",
                milliseconds,
            ),
            {
                "event_id": result.event_id or None,
                "type": event_type,
                "object_id": object_id,
                "outcome": outcome,
                "duplicate": result.duplicate,
                "commit_ms": milliseconds,
            },
        )


async def answer(
    scope: Scope,
    receive: Receive,
    send: Send,
    settings: Settings,
    storing: Awaitable[IngestResult],
    timeout: float,
    event_id: str | None,
    refusal_code: str,
    event_type: str | None = None,
    object_id: str | None = None,
) -> None:
    """Wait (at most ``timeout`` seconds) for the delivery to be stored, and say what became of it.

    Once the raw delivery is committed, the answer is 2xx whatever its outcome (failed events are
    re-applied by the mirror itself; refused bodies can never apply): Stripe retrying adds nothing.
    With ``answer_after="applied"`` a failed event answers 500 and a refused one 400, as before;
    ``refusal_code`` is the error code of a refusal (why the body is no storable event)."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):  # not wait_for: no task of its own for every delivery
            result = await storing
    except (DatabaseUnavailable, TimeoutError) as exc:
        metrics: Metrics | None = getattr(scope["app"].state, "metrics", None)
        if metrics is not None:
            metrics.unavailable.inc()
        if isinstance(exc, NotStored):
            logger.error("Delivery %s could not be stored: %s", event_id, exc)
            response = error_response(
                500, "internal_error", "The event could not be stored. Stripe will retry."
            )
            return await response(scope, receive, send)
        reason = str(exc) or f"no commit within {timeout} s"
        unavailable_log.happened(asyncio.get_running_loop(), reason)  # an outage fails every delivery
        response = error_response(
            503,
            "database_unavailable",
            "The database is unavailable; the event was not stored. Stripe will retry.",
            headers={"Retry-After": "5"},
        )
        return await response(scope, receive, send)
    except Exception:
        logger.exception("Delivery %s could not be stored", event_id)
        response = error_response(500, "internal_error", "The event could not be stored. Stripe will retry.")
        return await response(scope, receive, send)
    seconds = time.perf_counter() - started
    try:
        await _send_outcome(scope, receive, send, settings, result, refusal_code)
    finally:
        # After the answer is written: the client (Stripe waits for it) does not wait for the line
        # and the metrics, and serially its next delivery arrives meanwhile.
        _observe(scope, result, event_type, object_id, seconds)


async def _send_outcome(
    scope: Scope,
    receive: Receive,
    send: Send,
    settings: Settings,
    result: IngestResult,
    refusal_code: str,
) -> None:
    """The answer to a stored delivery (``answer``)."""
    applied_only = settings.answer_after == "applied"
    if result.outcome == Outcome.REFUSED:
        logger.warning("Refused a verified delivery (kept as a dead letter): %s", result.error)
        message = f"{result.error} (kept as a dead letter: billing-mirror events list --refused)"
        if applied_only:
            response = error_response(400, "invalid_request_error", message, code=refusal_code)
            return await response(scope, receive, send)
        refused = {
            "received": True,
            "id": result.event_id or None,
            "outcome": "refused",
            "error": {"code": refusal_code, "message": message},
        }
        return await send_json(send, 200, refused)
    if result.outcome == Outcome.FAILED and applied_only:
        response = error_response(
            500,
            "handler_error",
            f"Event {result.event_id} is stored but could not be applied; it is applied again on retry.",
            event=result.event_id,
        )
        return await response(scope, receive, send)
    content = {
        "received": True,
        "id": result.event_id,
        "outcome": result.outcome.value,
        "duplicate": result.duplicate,
    }
    if result.outcome == Outcome.FAILED:
        content["error"] = result.error
    return await send_json(send, 200, content)


receive_stripe_webhook = StripeWebhookEndpoint()
