"""GET /inspect and its pages, and POST /inspect/retry: HTML rendered on the server with Jinja2
(autoescaped: payloads, ids, errors and types are whatever was delivered), no JavaScript.

Pages only read, through the read engine, in Starlette's threadpool. The retry form writes the one way
every delivery does: the failed events' stored bodies are submitted to the app's committer (on a SQLite
file, its writer process), as the receiver's retrier and ``billing-mirror events retry`` re-apply them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jinja2
from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.templating import Jinja2Templates

from app.ingest.apply import DatabaseUnavailable, IngestResult
from app.ingest.committer import Committer
from app.inspect.auth import (
    CSRF_COOKIE,
    CSRF_FIELD,
    REALM,
    authorized_key,
    csrf_token_valid,
    new_csrf_token,
)
from app.inspect.queries import (
    EVENTS,
    OUTCOMES,
    Cursor,
    EventFilters,
    dead_letters_page,
    event_row,
    events_page,
    object_page,
    overview,
    retry_due_at,
)
from app.json_text import json_value
from app.mirror.envelope import INT64, EnvelopeError, parse_event
from app.mirror.outcome import Outcome
from app.settings import Settings
from app.timestamps import format_duration, format_time, parse_time

logger = logging.getLogger("billing_mirror.inspect")
TEMPLATES = Path(__file__).parent / "templates"
MAX_FORM_BYTES = 64 * 1024
RETRY_CHUNK = 200
MAX_PARAM_CHARS = 255  # no stored id or type is longer
SECURITY_HEADERS = {
    # No script runs on these pages, nothing loads from elsewhere, no other site may frame them.
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self';"
        " frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,  # every template, whatever its name: payloads are attacker-controlled
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["when"] = lambda seconds: (
        "" if seconds is None else format_time(int(seconds), zulu=True)
    )
    environment.filters["duration"] = format_duration
    environment.filters["cell"] = _cell
    return environment


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, dict | list):
        try:
            return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        except (TypeError, ValueError, RecursionError):
            return repr(value)
    return str(value)


templates = Jinja2Templates(env=_environment())


class BadInput(ValueError):
    """A query parameter the page cannot use: shown on the page, answered 400."""


# ---- answering ---------------------------------------------------------------------------------


def _base(request: Request) -> str:
    return str(request.scope.get("root_path", "")) + "/inspect"


def _render(
    request: Request, template: str, context: Mapping[str, Any], status: int = 200, key: str | None = None
) -> Response:
    """A page; with ``key``, the CSRF token of its retry forms (kept in a SameSite=Strict cookie)."""
    token = None
    if key is not None:
        cookie = request.cookies.get(CSRF_COOKIE)
        token = cookie if csrf_token_valid(key, cookie, cookie) else new_csrf_token(key)
    full = {"base": _base(request), "csrf_field": CSRF_FIELD, "csrf_token": token, **context}
    response = templates.TemplateResponse(
        request, template, full, status_code=status, headers=SECURITY_HEADERS
    )
    if token is not None and token != request.cookies.get(CSRF_COOKIE):
        response.set_cookie(
            CSRF_COOKIE,
            token,
            path=_base(request),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
    return response


def _message(
    request: Request, status: int, title: str, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    response = _render(request, "message.html", {"title": title, "message": message}, status=status)
    response.headers.update(headers or {})
    return response


def _unauthorized(request: Request, settings: Settings) -> Response:
    if not settings.api_keys:
        message = (
            "The inspector is closed because no API key is configured. Start the server with "
            "BILLING_MIRROR_API_KEYS set to one or more keys of your choosing, then open this page "
            "again and give one of them as the password (any user name)."
        )
        return _message(request, 401, "Closed", message)
    message = "Give a read API key (BILLING_MIRROR_API_KEYS) as the password; the user name is not used."
    return _message(request, 401, "Key needed", message, {"WWW-Authenticate": REALM})


Page = Callable[[Request, Engine, str], Response]


def _page(handle: Page) -> Callable[[Request], Response]:
    """Authenticate, then render; bad parameters answer 400 on the page, an unreachable database 503."""

    def endpoint(request: Request) -> Response:
        settings: Settings = request.app.state.settings
        key = authorized_key(request.headers.get("authorization"), settings.api_keys)
        if key is None:
            return _unauthorized(request, settings)
        try:
            return handle(request, request.app.state.read_engine, key)
        except BadInput as problem:
            return _message(request, 400, "Bad request", str(problem))
        except SQLAlchemyError:
            logger.exception("inspector: database unavailable")
            return _message(
                request,
                503,
                "Database unavailable",
                "The mirror's database did not answer; try again shortly.",
            )

    return endpoint


# ---- parameters --------------------------------------------------------------------------------


def _param(request: Request, name: str) -> str | None:
    value = request.query_params.get(name, "").strip()
    if not value:
        return None
    if len(value) > MAX_PARAM_CHARS or "\x00" in value:
        raise BadInput(f"{name}: no stored value is like this one")
    return value


def _time_param(request: Request, name: str) -> int | None:
    value = _param(request, name)
    if value is None:
        return None
    try:
        seconds = parse_time(value)
    except (ValueError, OverflowError) as exc:
        raise BadInput(f"{name}: {exc}") from None
    if seconds not in INT64:
        raise BadInput(f"{name}: {value!r} is past what a 64-bit time holds")
    return seconds


def _filters(request: Request) -> EventFilters:
    outcome = _param(request, "outcome")
    if outcome is not None and outcome not in OUTCOMES:
        raise BadInput(f"outcome: one of {', '.join(OUTCOMES)}")
    return EventFilters(
        type=_param(request, "type"),
        outcome=outcome,
        object_id=_param(request, "object"),
        since=_time_param(request, "since"),
        until=_time_param(request, "until"),
    )


def _cursor(request: Request, name: str) -> Cursor | None:
    value = _param(request, name)
    if value is None:
        return None
    try:
        return Cursor.parse(value)
    except ValueError as exc:
        raise BadInput(str(exc)) from None


def _page_links(request: Request, page: Any) -> dict[str, str | None]:
    """The URLs of the older and newer pages: the same filters, another cursor."""
    kept = [
        (name, value) for name, value in request.query_params.multi_items() if name not in ("older", "newer")
    ]
    path = request.url.path

    def link(name: str, cursor: Cursor | None) -> str | None:
        return None if cursor is None else f"{path}?{urlencode([*kept, (name, cursor.text())])}"

    return {"older": link("older", page.older), "newer": link("newer", page.newer)}


# ---- pages -------------------------------------------------------------------------------------


def _home(request: Request, engine: Engine, key: str) -> Response:
    filters = _filters(request)
    older, newer = _cursor(request, "older"), _cursor(request, "newer")
    with engine.connect() as connection:
        summary = overview(connection)
        page = events_page(connection, filters, older_than=older, newer_than=newer)
    context = {
        "title": "Events",
        "overview": summary,
        "page": page,
        "links": _page_links(request, page),
        "filters": filters,
        "form": {
            name: request.query_params.get(name, "")
            for name in ("type", "outcome", "object", "since", "until")
        },
        "outcomes": OUTCOMES,
    }
    return _render(request, "events.html", context, key=key)


def _object(request: Request, engine: Engine, key: str) -> Response:
    object_id = _param(request, "id")
    if object_id is None:
        raise BadInput("id: the id of a mirrored object (in_..., ii_..., inpay_..., il_..., mtr_..., ...)")
    with engine.connect() as connection:
        found = object_page(connection, object_id)
    status = 200 if found.rows or found.history else 404
    return _render(request, "object.html", {"title": object_id, "page": found}, status=status, key=key)


def _event(request: Request, engine: Engine, key: str) -> Response:
    event_id = _param(request, "id")
    if event_id is None:
        raise BadInput("id: an event id (evt_...)")
    with engine.connect() as connection:
        row = event_row(connection, event_id)
    if row is None:
        return _message(request, 404, "Not found", f"No stored event has the id {event_id}.")
    try:
        pretty = json.dumps(json_value(row.payload), indent=2, ensure_ascii=False)
    except (ValueError, RecursionError):
        pretty = row.payload
    context = {"title": event_id, "event": row, "payload": pretty, "retry_at": retry_due_at(row)}
    return _render(request, "event.html", context, key=key)


def _failed(request: Request, engine: Engine, key: str) -> Response:
    filters = EventFilters(
        type=_param(request, "type"), outcome=Outcome.FAILED.value, object_id=_param(request, "object")
    )
    older, newer = _cursor(request, "older"), _cursor(request, "newer")
    with engine.connect() as connection:
        page = events_page(connection, filters, older_than=older, newer_than=newer)
    retry_at = {row.id: retry_due_at(row) for row in page.rows}
    context = {
        "title": "Failed events",
        "page": page,
        "links": _page_links(request, page),
        "retry_at": retry_at,
        "form": {name: request.query_params.get(name, "") for name in ("type", "object")},
    }
    return _render(request, "failed.html", context, key=key)


def _dead_letters(request: Request, engine: Engine, key: str) -> Response:
    before = _param(request, "before")
    if before is not None and not (before.isascii() and before.isdigit() and int(before) in INT64):
        raise BadInput("before: a dead letter id")
    with engine.connect() as connection:
        page = dead_letters_page(connection, None if before is None else int(before))
    older = None if page.older is None else f"{request.url.path}?{urlencode({'before': page.older})}"
    letters = [
        {**row._mapping, "preview": bytes(row.preview).decode("utf-8", "replace")} for row in page.rows
    ]
    return _render(
        request, "dead_letters.html", {"title": "Dead letters", "letters": letters, "older": older}, key=key
    )


# ---- the retry form ----------------------------------------------------------------------------


def _same_origin(request: Request) -> bool:
    """A browser's Origin, when it sends one, names this host (any scheme: TLS may end at a proxy)."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return True
    return urlsplit(origin).netloc == request.headers.get("host", "")


def _payloads(engine: Engine, ids: list[str]) -> dict[str, tuple[str, str]]:
    with engine.connect() as connection:
        found = connection.execute(
            select(EVENTS.c.id, EVENTS.c.payload, EVENTS.c.source).where(EVENTS.c.id.in_(ids))
        )
        return {row.id: (row.payload, row.source) for row in found}


def _failed_ids(engine: Engine, after: str) -> list[str]:
    query = (
        select(EVENTS.c.id)
        .where(EVENTS.c.outcome == Outcome.FAILED.value, EVENTS.c.id > after)
        .order_by(EVENTS.c.id)
        .limit(RETRY_CHUNK)
    )
    with engine.connect() as connection:
        return list(connection.execute(query).scalars())


@dataclass(frozen=True)
class Retried:
    id: str
    outcome: str  # an Outcome, or "not found" / "unreadable" / "unavailable"
    error: str | None = None
    duplicate: bool = False  # the event was not failed: left as it was


async def _retry_chunk(committer: Committer, engine: Engine, timeout: float, ids: list[str]) -> list[Retried]:
    """Submit the stored bodies of ``ids`` to the committer at once (they share its transactions)."""
    storable = [event_id for event_id in ids if len(event_id) <= MAX_PARAM_CHARS and "\x00" not in event_id]
    stored = await asyncio.to_thread(_payloads, engine, storable) if storable else {}
    results: list[Retried] = []
    submitted: list[tuple[str, asyncio.Future[IngestResult]]] = []
    for event_id in ids:
        if event_id not in stored:
            results.append(Retried(event_id, "not found"))
            continue
        payload, source = stored[event_id]
        try:
            event = parse_event(payload.encode("utf-8"), source)
        except EnvelopeError as exc:
            results.append(Retried(event_id, "unreadable", exc.message))
            continue
        submitted.append(
            (event_id, asyncio.ensure_future(asyncio.wait_for(committer.submit(event), timeout)))
        )
    for event_id, future in submitted:
        try:
            result = await future
        except Exception as exc:  # the database is out (DatabaseUnavailable), or no commit in time
            if not isinstance(exc, DatabaseUnavailable | TimeoutError):
                logger.exception("inspector: retrying %s failed", event_id)
            results.append(Retried(event_id, "unavailable", str(exc) or "no commit in time"))
            continue
        results.append(Retried(event_id, result.outcome.value, result.error, result.duplicate))
    return results


async def retry(request: Request) -> Response:
    """POST /inspect/retry: re-apply the failed events named (``event_id``, repeatable) or every failed
    event (``all=1``), each through the committer; any other event is left as it is (a duplicate)."""
    settings: Settings = request.app.state.settings
    key = authorized_key(request.headers.get("authorization"), settings.api_keys)
    if key is None:
        return _unauthorized(request, settings)
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return _message(request, 413, "Too large", "The form is larger than any retry form.")
    try:
        form = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=RETRY_CHUNK + 10)
    except (UnicodeDecodeError, ValueError):
        form = {}
    field = next(iter(form.get(CSRF_FIELD, [])), None)
    if not _same_origin(request) or not csrf_token_valid(key, request.cookies.get(CSRF_COOKIE), field):
        message = "The form's token is missing or does not match: open the page again and retry from it."
        return _message(request, 403, "Refused", message)
    committer: Committer = request.app.state.committer
    engine: Engine = request.app.state.read_engine
    timeout = float(settings.database_timeout_seconds) * 4
    results: list[Retried] = []
    try:
        if form.get("all") == ["1"]:
            after = ""
            while ids := await asyncio.to_thread(_failed_ids, engine, after):
                results += await _retry_chunk(committer, engine, timeout, ids)
                after = ids[-1]
        else:
            ids = list(dict.fromkeys(value for value in form.get("event_id", []) if value))[:RETRY_CHUNK]
            if not ids:
                return _message(request, 400, "Nothing to retry", "Choose at least one failed event.")
            results = await _retry_chunk(committer, engine, timeout, ids)
    except SQLAlchemyError:
        logger.exception("inspector: database unavailable during a retry")
        return _message(
            request, 503, "Database unavailable", "The mirror's database did not answer; try again shortly."
        )
    logger.info("inspector: retried %d events", len(results))
    return _render(request, "retried.html", {"title": "Retried", "results": results}, key=key)


def inspector_routes() -> list[BaseRoute]:
    return [
        Route("/inspect", _page(_home), methods=["GET"]),
        Route("/inspect/object", _page(_object), methods=["GET"]),
        Route("/inspect/event", _page(_event), methods=["GET"]),
        Route("/inspect/failed", _page(_failed), methods=["GET"]),
        Route("/inspect/dead-letters", _page(_dead_letters), methods=["GET"]),
        Route("/inspect/retry", retry, methods=["POST"]),
    ]
