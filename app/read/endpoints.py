"""GET list and retrieve endpoints, built for every resource in app.read.registry.

Endpoints are plain functions: Starlette runs them in its threadpool, so the blocking database calls
never stall the event loop (and the webhook receiver that shares it).

Every answer that is not a 2xx is Stripe's error object, whatever the method and URL under /v1: a read
URL asked with another method answers 405 with ``Allow``, any other URL 404 ``Unrecognized request URL``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from starlette.datastructures import URLPath
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, NoMatchFound, Route, request_response
from starlette.types import Receive, Scope, Send

from app.read.auth import authenticate
from app.read.errors import InvalidRequest, resource_missing
from app.read.params import (
    Expand,
    ParamSpec,
    parse_list_request,
    parse_params,
    parse_query_string,
    why_never_stored,
)
from app.read.registry import NESTED_LISTS, RESOURCES
from app.read.resource import NestedList, Resource
from app.settings import Settings

JSON = "application/json"
logger = logging.getLogger("billing_mirror.api")
SyncEndpoint = Callable[[Request], Response]
READ_METHODS = ("GET", "HEAD")  # HEAD runs the GET handler; the server sends its headers, no body


def api_error(status: int, message: str) -> Response:
    """Stripe's ``api_error``: the request was fine, the server could not answer it."""
    body = json.dumps({"error": {"type": "api_error", "message": message}})
    return Response(body, status_code=status, media_type=JSON)


def stripe_error(problem: InvalidRequest, headers: Mapping[str, str] | None = None) -> Response:
    """Stripe's error object; ``code`` and ``param`` only when they apply."""
    error: dict[str, Any] = {"type": "invalid_request_error", "message": problem.message}
    if problem.code is not None:
        error["code"] = problem.code
    if problem.param is not None:
        error["param"] = problem.param
    if problem.status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": 'Basic realm="billing-mirror"'}
    body = json.dumps({"error": error})
    return Response(body, status_code=problem.status, media_type=JSON, headers=headers)


def method_not_allowed(request: Request) -> Response:
    message = (
        f"The mirror only reads: {request.method} {request.scope['path']} is not served "
        f"(this URL answers {' and '.join(READ_METHODS)}). Send changes to Stripe."
    )
    return stripe_error(InvalidRequest(message, status=405), headers={"Allow": ", ".join(READ_METHODS)})


def _guarded(handle: Callable[[Request, Engine], str]) -> SyncEndpoint:
    """Refuse other methods, authenticate, run, and turn an ``InvalidRequest`` into Stripe's error
    response."""

    def endpoint(request: Request) -> Response:
        if request.method not in READ_METHODS:
            return method_not_allowed(request)
        settings: Settings = request.app.state.settings
        try:
            authenticate(request.headers.get("authorization"), settings.api_keys)
            body = handle(request, request.app.state.read_engine)
        except InvalidRequest as problem:
            return stripe_error(problem)
        except OperationalError:
            logger.exception("read API: database unavailable")
            return api_error(503, "The mirror's database is unavailable; try again shortly.")
        except Exception:
            logger.exception("read API: unexpected error")
            return api_error(500, "The mirror could not answer this request.")
        return Response(body, media_type=JSON)

    return endpoint


def stripe_account(request: Request) -> str | None:
    """The Connect account a request is made for (``Stripe-Account``), as Stripe reads it: with one,
    only that account's objects; without, only the platform's own."""
    account = request.headers.get("stripe-account") or None
    problem = None if account is None else why_never_stored(account)
    if problem is not None:
        raise InvalidRequest(f"Invalid Stripe-Account header: an account id {problem}.")
    return account


def raw_parameters(request: Request) -> dict[str, Any]:
    """The query string as nested raw values, read from the bytes received: ``request.url`` would
    fail on bytes that are not UTF-8, which parse_query_string refuses by parameter name."""
    raw: bytes = request.scope.get("query_string", b"")
    return parse_query_string(raw)


def path_id(request: Request, name: str, object_name: str, param: str) -> str:
    """An id from the URL; one no object can have (NUL, say) is missing without asking the database."""
    object_id: str = request.path_params[name]
    if why_never_stored(object_id) is not None:
        raise resource_missing(object_name, object_id, param=param, status=404)
    return object_id


def list_schema(resource: Resource) -> dict[str, ParamSpec]:
    """What a list takes besides the paging parameters."""
    return {**resource.filters, "expand": Expand(resource.list_expandable())}


def nested_list_schema(nested: NestedList) -> dict[str, ParamSpec]:
    return {**nested.filters, "expand": Expand()}  # nothing to expand: any path is refused by name


def retrieve_schema(resource: Resource) -> dict[str, ParamSpec]:
    return {"expand": Expand(resource.expandable)}


def list_endpoint(resource: Resource) -> SyncEndpoint:
    schema = list_schema(resource)

    def handle(request: Request, engine: Engine) -> str:
        wanted = parse_list_request(raw_parameters(request), schema)
        expand = frozenset(path.removeprefix("data.") for path in wanted.filters.get("expand", ()))
        filters = {key: value for key, value in wanted.filters.items() if key != "expand"}
        wanted = replace(wanted, filters=filters, account=stripe_account(request))
        with engine.connect() as connection:
            page = resource.list_page(connection, wanted)
            if expand and resource.expand is not None:
                page = replace(page, payloads=resource.expand(connection, page.payloads, expand))
        return page.list_json(resource.url)

    return _guarded(handle)


def nested_list_endpoint(nested: NestedList) -> SyncEndpoint:
    schema = nested_list_schema(nested)

    def handle(request: Request, engine: Engine) -> str:
        wanted = parse_list_request(raw_parameters(request), schema)
        wanted = replace(wanted, account=stripe_account(request))
        parent_id = path_id(request, "parent_id", nested.parent_name, param=nested.parent_name)
        with engine.connect() as connection:
            page = nested.list_page(connection, parent_id, wanted)
        return page.list_json(nested.url_for(parent_id))

    return _guarded(handle)


def retrieve_endpoint(resource: Resource) -> SyncEndpoint:
    schema = retrieve_schema(resource)

    def handle(request: Request, engine: Engine) -> str:
        expand = parse_params(raw_parameters(request), schema).get("expand", frozenset())
        object_id = path_id(request, "object_id", resource.object_name, param="id")
        with engine.connect() as connection:
            found = resource.retrieve(connection, object_id, stripe_account(request))
            if found is not None and expand and resource.expand is not None:
                [found] = resource.expand(connection, [found], expand)
        if found is None:
            raise resource_missing(resource.object_name, object_id, param="id", status=404)
        return found

    return _guarded(handle)


def unknown_url(request: Request) -> Response:
    """Stripe's answer to a URL it does not serve (its message points at its own docs and support; the
    mirror's at its README). The path comes from the scope: ``request.url`` fails on a query string
    that is not UTF-8."""
    message = (
        f"Unrecognized request URL ({request.method}: {request.scope['path']}). "
        "The mirror serves the read endpoints listed in its README (Read API)."
    )
    return stripe_error(InvalidRequest(message, status=404))


class AnyMethod:
    """An endpoint routed for every HTTP method. Starlette routes a plain function for its ``methods``
    only and answers any other itself, with a body that is not Stripe's error object."""

    def __init__(self, endpoint: SyncEndpoint) -> None:
        self._app = request_response(endpoint)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)


class EverythingUnder(BaseRoute):
    """Every path under ``prefix``, for every method: Starlette's ``{rest:path}`` stops at a newline
    (``.`` in its pattern), so "/v1/a%0A/b" would miss it and get a body that is not Stripe's."""

    def __init__(self, prefix: str, endpoint: SyncEndpoint) -> None:
        self.prefix = prefix
        self.app = AnyMethod(endpoint)

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        path: str = scope.get("path", "")
        root_path: str = scope.get("root_path", "")
        if root_path and path.startswith(root_path + "/"):  # the path as routes see it (see Router)
            path = path[len(root_path) :]
        under = path == self.prefix or path.startswith(self.prefix + "/")
        return (Match.FULL if scope["type"] == "http" and under else Match.NONE), {}

    def url_path_for(self, name: str, /, **path_params: Any) -> URLPath:
        raise NoMatchFound(name, path_params)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def api_routes() -> list[BaseRoute]:
    routes: list[BaseRoute] = [
        Route(nested.url, AnyMethod(nested_list_endpoint(nested))) for nested in NESTED_LISTS
    ]
    for resource in RESOURCES:
        routes.append(Route(resource.url, AnyMethod(list_endpoint(resource))))
        routes.append(Route(resource.url + "/{object_id}", AnyMethod(retrieve_endpoint(resource))))
    # Last: anything else under /v1 answers like Stripe does for a URL it does not know.
    routes.append(EverythingUnder("/v1", unknown_url))
    return routes
