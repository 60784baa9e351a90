"""GET list and retrieve endpoints, built for every resource in app.read.registry.

Endpoints are plain functions: Starlette runs them in its threadpool, so the blocking database calls
never stall the event loop (and the webhook receiver that shares it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from app.read.auth import authenticate
from app.read.errors import InvalidRequest, resource_missing
from app.read.params import Expand, parse_list_request, parse_params, parse_query_string
from app.read.registry import NESTED_LISTS, RESOURCES
from app.read.resource import NestedList, Resource
from app.settings import Settings

JSON = "application/json"
logger = logging.getLogger("billing_mirror.api")
SyncEndpoint = Callable[[Request], Response]


def api_error(status: int, message: str) -> Response:
    """Stripe's ``api_error``: the request was fine, the server could not answer it."""
    body = json.dumps({"error": {"type": "api_error", "message": message}})
    return Response(body, status_code=status, media_type=JSON)


def stripe_error(problem: InvalidRequest) -> Response:
    """Stripe's error object; ``code`` and ``param`` only when they apply."""
    error: dict[str, Any] = {"type": "invalid_request_error", "message": problem.message}
    if problem.code is not None:
        error["code"] = problem.code
    if problem.param is not None:
        error["param"] = problem.param
    headers = {"WWW-Authenticate": 'Basic realm="billing-mirror"'} if problem.status == 401 else None
    body = json.dumps({"error": error})
    return Response(body, status_code=problem.status, media_type=JSON, headers=headers)


def _guarded(handle: Callable[[Request, Engine], str]) -> SyncEndpoint:
    """Authenticate, run, and turn an ``InvalidRequest`` into Stripe's error response."""

    def endpoint(request: Request) -> Response:
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
    return request.headers.get("stripe-account") or None


def list_endpoint(resource: Resource) -> SyncEndpoint:
    schema = {**resource.filters, "expand": Expand(resource.list_expandable())}

    def handle(request: Request, engine: Engine) -> str:
        wanted = parse_list_request(parse_query_string(request.url.query), schema)
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
    schema = {**nested.filters, "expand": Expand()}  # nothing to expand: any path is refused by name

    def handle(request: Request, engine: Engine) -> str:
        wanted = parse_list_request(parse_query_string(request.url.query), schema)
        wanted = replace(wanted, account=stripe_account(request))
        parent_id: str = request.path_params["parent_id"]
        with engine.connect() as connection:
            page = nested.list_page(connection, parent_id, wanted)
        return page.list_json(nested.url_for(parent_id))

    return _guarded(handle)


def retrieve_endpoint(resource: Resource) -> SyncEndpoint:
    schema = {"expand": Expand(resource.expandable)}

    def handle(request: Request, engine: Engine) -> str:
        expand = parse_params(parse_query_string(request.url.query), schema).get("expand", frozenset())
        object_id: str = request.path_params["object_id"]
        with engine.connect() as connection:
            found = resource.retrieve(connection, object_id, stripe_account(request))
            if found is not None and expand and resource.expand is not None:
                [found] = resource.expand(connection, [found], expand)
        if found is None:
            raise resource_missing(resource.object_name, object_id, param="id", status=404)
        return found

    return _guarded(handle)


def unknown_url(request: Request) -> Response:
    message = f"Unrecognized request URL ({request.method}: {request.url.path})."
    return stripe_error(InvalidRequest(message, status=404))


def api_routes() -> list[BaseRoute]:
    routes: list[BaseRoute] = [
        Route(nested.url, nested_list_endpoint(nested), methods=["GET"]) for nested in NESTED_LISTS
    ]
    for resource in RESOURCES:
        routes.append(Route(resource.url, list_endpoint(resource), methods=["GET"]))
        routes.append(Route(resource.url + "/{object_id}", retrieve_endpoint(resource), methods=["GET"]))
    # Last: anything else under /v1 answers like Stripe does for a URL it does not know.
    routes.append(Route("/v1/{rest:path}", unknown_url, methods=["GET", "POST", "DELETE"]))
    return routes
