"""The Starlette application: Stripe's GET list and retrieve endpoints for the Billing resources, with
Stripe's authentication, headers, list contract, errors, rate limits and injected faults."""

from __future__ import annotations

import asyncio
import base64
import math
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from email.utils import formatdate
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.stripe_server.errors import ApiError, resource_missing
from tests.stripe_server.faults import Delay, Faults, LoggedRequest, Mutate, RateLimits, RequestLog
from tests.stripe_server.query import Params, TimeRange, parse_query
from tests.stripe_server.store import (
    ALERTS,
    EVENTS,
    INVOICE_ITEMS,
    INVOICE_PAYMENTS,
    INVOICES,
    LIST_URLS,
    METERS,
    OBJECT_NAMES,
    PLATFORM_ACCOUNT,
    TEMPLATES,
    Account,
    Collection,
    Matcher,
    Record,
    ServerClock,
    Store,
    list_envelope,
)

API_VERSION = "2026-07-29.dahlia"
API_KEY = "sk_test_billing_mirror_emulator"
PAGING = ("limit", "starting_after", "ending_before", "expand")
MAX_LIMIT = 100
DEFAULT_LIMIT = 10
EVENT_HORIZON_SECONDS = 30 * 86_400
MAX_EVENT_TYPES = 20
EMBEDDED_PAYMENTS = 10  # how many payments Stripe embeds is not documented


@dataclass(frozen=True)
class ServerConfig:
    api_keys: tuple[str, ...] = (API_KEY,)
    api_version: str = API_VERSION
    strict_version: bool = True  # another Stripe-Version is refused (stripe-mock's -strict-version-check)
    deleted_stub: bool = False  # retrieving a deleted object answers {id, object, deleted: true}, not 404
    event_horizon_seconds: int = EVENT_HORIZON_SECONDS


# ---- filters: each list's parameters turned into matchers ------------------------------------------


def _at(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _object_id(value: Any) -> Any:
    return value.get("id") if isinstance(value, dict) else value


FilterBuilder = Callable[[Params, Account], Matcher | None]


def _equals(name: str, *path: str, choices: tuple[str, ...] | None = None) -> tuple[str, FilterBuilder]:
    def build(params: Params, account: Account) -> Matcher | None:
        wanted = params.string(name) if choices is None else params.choice(name, choices)
        if wanted is None:
            return None
        return lambda obj: _object_id(_at(obj, *path)) == wanted

    return name, build


def _due_date(params: Params, account: Account) -> Matcher | None:
    window = params.time_range("due_date")
    return None if window is None else lambda obj: window.contains(obj.get("due_date"))


def _subscription(params: Params, account: Account) -> Matcher | None:
    wanted = params.string("subscription")
    if wanted is None:
        return None
    # since 2025-03-31.basil the subscription sits under parent.subscription_details
    return lambda obj: (
        wanted in (obj.get("subscription"), _at(obj, "parent", "subscription_details", "subscription"))
    )


def _pending(params: Params, account: Account) -> Matcher | None:
    pending = params.boolean("pending")
    return None if pending is None else lambda obj: (obj.get("invoice") is None) == pending


def _payment(params: Params, account: Account) -> Matcher | None:
    payment = params.hash("payment", ("type", "payment_intent", "payment_record"))
    if payment is None:
        return None
    kinds = ("payment_intent", "payment_record")
    kind = payment.get("type")
    if kind is None:
        raise ApiError(
            400, "Missing required param: payment[type].", code="parameter_missing", param="payment[type]"
        )
    if kind not in kinds:
        raise ApiError(
            400, f"Invalid payment[type]: must be one of {', '.join(kinds)}", param="payment[type]"
        )
    wanted = {key: value for key, value in payment.items() if key != "type"}
    return lambda obj: (
        _at(obj, "payment", "type") == kind
        and all(_object_id(_at(obj, "payment", key)) == value for key, value in wanted.items())
    )


def _event_types(params: Params, account: Account) -> Matcher | None:
    single, many = params.string("type"), params.strings("types")
    if single is not None and many is not None:
        raise ApiError(400, "You may only specify one of these parameters: type, types.", param="types")
    if many is not None:
        if len(many) > MAX_EVENT_TYPES:
            raise ApiError(400, f"You may pass at most {MAX_EVENT_TYPES} types.", param="types")
        names = set(many)
        return lambda obj: obj.get("type") in names
    if single is None:
        return None
    pattern = re.compile(re.escape(single).replace(r"\*", ".*"))
    return lambda obj: pattern.fullmatch(obj.get("type", "")) is not None


def _delivery_success(params: Params, account: Account) -> Matcher | None:
    wanted = params.boolean("delivery_success")
    if wanted is None:
        return None
    return lambda obj: account.event_delivered.get(obj["id"], True) == wanted


@dataclass(frozen=True)
class ListSpec:
    resource: str
    filters: dict[str, FilterBuilder]
    created: bool  # whether the list takes a `created` filter
    expandable: frozenset[str] = frozenset()

    def accepted(self) -> tuple[str, ...]:
        return (*PAGING, *self.filters, *(("created",) if self.created else ()))


LISTS = {
    INVOICES: ListSpec(
        INVOICES,
        dict(
            [
                _equals("status", "status", choices=("draft", "open", "paid", "uncollectible", "void")),
                _equals("customer", "customer"),
                _equals("customer_account", "customer_account"),
                ("subscription", _subscription),
                _equals(
                    "collection_method", "collection_method", choices=("charge_automatically", "send_invoice")
                ),
                ("due_date", _due_date),
            ]
        ),
        created=True,
        expandable=frozenset({"data.payments"}),
    ),
    INVOICE_ITEMS: ListSpec(
        INVOICE_ITEMS,
        dict(
            [
                _equals("customer", "customer"),
                _equals("customer_account", "customer_account"),
                _equals("invoice", "invoice"),
                ("pending", _pending),
            ]
        ),
        created=True,
    ),
    INVOICE_PAYMENTS: ListSpec(
        INVOICE_PAYMENTS,
        dict(
            [
                _equals("invoice", "invoice"),
                _equals("status", "status", choices=("canceled", "open", "paid")),
                ("payment", _payment),
            ]
        ),
        created=True,
    ),
    METERS: ListSpec(
        METERS, dict([_equals("status", "status", choices=("active", "inactive"))]), created=False
    ),
    ALERTS: ListSpec(
        ALERTS,
        dict(
            [
                _equals("alert_type", "alert_type", choices=("usage_threshold",)),
                _equals("meter", "usage_threshold", "meter"),
            ]
        ),
        created=False,
    ),
    TEMPLATES: ListSpec(
        TEMPLATES, dict([_equals("status", "status", choices=("active", "archived"))]), created=False
    ),
    EVENTS: ListSpec(
        EVENTS,
        {"type": _event_types, "types": _event_types, "delivery_success": _delivery_success},
        created=True,
    ),
}
LINES = ListSpec("lines", {}, created=False)
RETRIEVE_EXPANDABLE = {INVOICES: frozenset({"payments"})}


# ---- the server ---------------------------------------------------------------------------------


@dataclass
class Context:
    """What one request's handler needs: its account's data and the server time."""

    account: Account
    now: float
    params: dict[str, Any]
    object_id: str | None = None


Handler = Callable[[Context], bytes]


@dataclass
class Endpoint:
    name: str  # the per-endpoint rate-limit key and the log's name, e.g. "GET /v1/invoices/{id}"
    pattern: re.Pattern[str]
    handler: Handler


@dataclass
class StripeServer:
    """Configuration, data, faults, limits and request log, and the ASGI app (``app``) that serves them.
    ``reset`` starts over in place, so one running server serves many tests."""

    config: ServerConfig = field(default_factory=ServerConfig)
    clock: ServerClock = field(default_factory=ServerClock)

    def __post_init__(self) -> None:
        self.store = Store(self.clock)
        self.faults = Faults()
        self.rate_limits = RateLimits(self.clock)
        self.log = RequestLog()
        self.endpoints = self._endpoints()
        self.app = Starlette(routes=[Route("/{path:path}", self._serve, methods=["GET", "POST", "DELETE"])])

    def reset(self, config: ServerConfig | None = None, *, now: float | None = None) -> None:
        self.config = config or ServerConfig()
        self.clock = ServerClock(now)
        self.store = Store(self.clock)
        self.faults = Faults()
        self.rate_limits = RateLimits(self.clock)
        self.log = RequestLog()

    def configure(self, **changes: Any) -> None:
        self.config = replace(self.config, **changes)

    # -- transport ------------------------------------------------------------------------------

    async def _serve(self, request: Request) -> Response:
        arrived = time.monotonic()  # before any work, so intervals between requests are arrivals'
        request_id = "req_" + secrets.token_hex(8)
        path = request.url.path
        query = request.scope["query_string"].decode("latin-1")
        headers = {name.lower(): value for name, value in request.headers.items()}
        version = headers.get("stripe-version", self.config.api_version)
        account_id: str | None = None
        endpoint: Endpoint | None = None
        params: dict[str, Any] | None = None
        mutations: list[Mutate] = []
        extra_headers: dict[str, str] = {}
        status = 200
        try:
            self._authenticate(headers.get("authorization"))
            if version != self.config.api_version and self.config.strict_version:
                rejected, version = version, self.config.api_version
                raise ApiError(400, f"Invalid Stripe API version: {rejected}")
            account_id = headers.get("stripe-account", PLATFORM_ACCOUNT)
            if account_id not in self.store.accounts:
                raise ApiError(
                    403,
                    f"The provided key does not have access to account '{account_id}' (or that account does "
                    "not exist). Application access may have been revoked.",
                )
            endpoint, object_id = self._route(request.method, path)
            self.rate_limits.take(account_id, endpoint.name)
            for fault in self.faults.for_request(path):
                if isinstance(fault, Delay):
                    await asyncio.sleep(fault.seconds)
                elif isinstance(fault, Mutate):
                    mutations.append(fault)
                else:
                    raise fault
            params = parse_query(query)
            with self.store.lock:
                context = Context(self.store.account(account_id), self.clock.now(), params, object_id)
                body = endpoint.handler(context)
        except ApiError as error:
            status, body, extra_headers = error.status, error.body(request_id), error.headers
        response = Response(
            body,
            status_code=status,
            media_type="application/json",
            headers={
                "Request-Id": request_id,
                "Date": formatdate(self.clock.now(), usegmt=True),
                "Stripe-Version": version,
                **extra_headers,
            },
        )
        self.log.append(
            LoggedRequest(
                method=request.method,
                path=path,
                query=query,
                params=params,
                headers=headers,
                request_id=request_id,
                status=status,
                server_time=self.clock.now(),
                monotonic=arrived,
                account=account_id,
                endpoint=endpoint.name if endpoint else None,
            )
        )
        for mutation in mutations:
            mutation.change(self.store)
        return response

    def _authenticate(self, authorization: str | None) -> None:
        if not authorization:
            raise ApiError(
                401,
                "You did not provide an API key. You need to provide your API key in the Authorization "
                "header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
            )
        scheme, _, credentials = authorization.partition(" ")
        key = credentials.strip()
        if scheme.lower() == "basic":
            try:
                key = base64.b64decode(key, validate=True).decode().partition(":")[0]
            except ValueError:
                key = ""
        elif scheme.lower() != "bearer":
            key = ""
        if not any(secrets.compare_digest(key.encode(), known.encode()) for known in self.config.api_keys):
            shown = f"{key[:8]}{'*' * 4}{key[-4:]}" if len(key) > 12 else "****"
            raise ApiError(
                401,
                f"Invalid API Key provided: {shown}. Provide a valid looking testmode secret API key.",
            )

    def _route(self, method: str, path: str) -> tuple[Endpoint, str | None]:
        if method == "GET":
            for endpoint in self.endpoints:
                match = endpoint.pattern.fullmatch(path)
                if match is not None:
                    return endpoint, match.groupdict().get("id")
        raise ApiError(
            404,
            f"Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs or we can help "
            "at https://support.stripe.com/.",
        )

    def _endpoints(self) -> list[Endpoint]:
        endpoints: list[Endpoint] = []
        for resource, url in LIST_URLS.items():
            endpoints.append(Endpoint(f"GET {url}", re.compile(re.escape(url)), self._lister(resource)))
            endpoints.append(
                Endpoint(
                    f"GET {url}/{{id}}",
                    re.compile(re.escape(url) + r"/(?P<id>[^/]+)"),
                    self._retriever(resource),
                )
            )
        endpoints.append(
            Endpoint(
                "GET /v1/invoices/{id}/lines",
                re.compile(r"/v1/invoices/(?P<id>[^/]+)/lines"),
                self._list_lines,
            )
        )
        return endpoints

    # -- handlers ------------------------------------------------------------------------------

    def _lister(self, resource: str) -> Handler:
        spec = LISTS[resource]

        def handle(context: Context) -> bytes:
            params = Params(context.params, spec.accepted())
            expand = _expansions(params, spec.expandable)
            matchers = [
                matcher for build in set(spec.filters.values()) if (matcher := build(params, context.account))
            ]
            window = params.time_range("created") if spec.created else None
            if resource == EVENTS:
                window, matchers = self._event_scope(context, window, matchers)
            collection = context.account.collections[resource]
            listed = (lambda record: self._event_listed(context, record)) if resource == EVENTS else None
            records, has_more = _page(params, collection, OBJECT_NAMES[resource], window, matchers, listed)
            bodies = [
                self._with_payments(context.account, record) if "data.payments" in expand else record.body
                for record in records
            ]
            return list_envelope(bodies, has_more, LIST_URLS[resource])

        return handle

    def _retriever(self, resource: str) -> Handler:
        expandable = RETRIEVE_EXPANDABLE.get(resource, frozenset())

        def handle(context: Context) -> bytes:
            params = Params(context.params, ("expand",))
            expand = _expansions(params, expandable)
            assert context.object_id is not None
            record = context.account.collections[resource].get(context.object_id)
            if record is not None and resource == EVENTS and not self._event_listed(context, record):
                record = None
            if record is None:
                deleted_as = context.account.deleted[resource].get(context.object_id)
                if deleted_as is not None and self.config.deleted_stub:
                    return _deleted_stub(context.object_id, deleted_as)
                raise resource_missing(OBJECT_NAMES[resource], context.object_id)
            return self._with_payments(context.account, record) if "payments" in expand else record.body

        return handle

    def _list_lines(self, context: Context) -> bytes:
        params = Params(context.params, LINES.accepted())
        _expansions(params, frozenset())
        assert context.object_id is not None
        lines = context.account.lines.get(context.object_id)
        if lines is None:
            raise resource_missing("invoice", context.object_id)
        records, has_more = _page(params, lines, "line_item", None, [])
        return list_envelope(
            (record.body for record in records), has_more, f"/v1/invoices/{context.object_id}/lines"
        )

    def _with_payments(self, account: Account, invoice: Record) -> bytes:
        """The invoice's JSON with its includable ``payments`` list spliced in before the closing brace."""
        payments = account.payments_by_invoice.get(invoice.id) or Collection()
        records, has_more = payments.page(limit=EMBEDDED_PAYMENTS)
        embedded = list_envelope(
            (record.body for record in records), has_more, f"/v1/invoice_payments?invoice={invoice.id}"
        )
        return invoice.body[:-1] + b',"payments":' + embedded + b"}"

    def _event_scope(
        self, context: Context, window: TimeRange | None, matchers: list[Matcher]
    ) -> tuple[TimeRange, list[Matcher]]:
        """Events are listed for 30 days (by the server clock) and only once visible."""
        horizon = math.ceil(context.now - self.config.event_horizon_seconds)
        window = (window or TimeRange()).narrowed(horizon)
        visible_at = context.account.event_visible_at
        if visible_at:
            matchers = [*matchers, lambda obj: visible_at.get(obj["id"], 0.0) <= context.now]
        return window, matchers

    def _event_listed(self, context: Context, record: Record) -> bool:
        window, matchers = self._event_scope(context, None, [])
        return window.contains(record.key[0]) and all(matcher(record.obj) for matcher in matchers)


def _deleted_stub(object_id: str, object_name: str) -> bytes:
    return b'{"id":"%s","object":"%s","deleted":true}' % (object_id.encode(), object_name.encode())


def _expansions(params: Params, expandable: frozenset[str]) -> set[str]:
    requested = set(params.strings("expand") or [])
    for path in sorted(requested - expandable):
        raise ApiError(400, f"This property cannot be expanded ({path}).", param="expand")
    return requested


def _page(
    params: Params,
    collection: Collection,
    object_name: str,
    window: TimeRange | None,
    matchers: list[Matcher],
    listed: Callable[[Record], bool] | None = None,
) -> tuple[list[Record], bool]:
    """One page of ``collection`` by the paging parameters; ``listed`` says which objects exist as cursors
    (events past the horizon do not)."""
    limit = params.integer("limit")
    if limit is None:
        limit = DEFAULT_LIMIT
    if limit < 1:
        raise ApiError(400, "This value must be greater than or equal to 1.", param="limit")
    if limit > MAX_LIMIT:
        raise ApiError(400, f"This value must be less than or equal to {MAX_LIMIT}.", param="limit")
    after_id, before_id = params.string("starting_after"), params.string("ending_before")
    if after_id is not None and before_id is not None:
        raise ApiError(
            400,
            "You may only specify one of these parameters: ending_before, starting_after.",
            param="ending_before",
        )
    cursors: dict[str, Record] = {}
    for name, cursor_id in (("starting_after", after_id), ("ending_before", before_id)):
        if cursor_id is not None:
            record = collection.get(cursor_id)
            if record is None or (listed is not None and not listed(record)):
                raise resource_missing(object_name, cursor_id, param=name)
            cursors[name] = record
    matches: Matcher | None = None
    if matchers:
        matches = (
            matchers[0] if len(matchers) == 1 else (lambda obj: all(matcher(obj) for matcher in matchers))
        )
    return collection.page(
        limit=limit,
        window=window,
        matches=matches,
        after=cursors["starting_after"].key if "starting_after" in cursors else None,
        before=cursors["ending_before"].key if "ending_before" in cursors else None,
    )
