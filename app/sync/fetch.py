"""Fetch Stripe list pages as the raw JSON Stripe sent, with the time Stripe's clock said.

Every request goes through one client-side limiter (requests per second, shared by the threads of a
sync), the SDK's own retries (``max_network_retries``: 5xx, 409, lock timeouts and the network, as
Stripe-Should-Retry says) and ours for what the SDK never retries: a 429 from Stripe's rate limiter
(``code: rate_limit``) and a connection that failed for good, with exponential back-off (stamina).

Objects are taken from the response body, not from the SDK's objects: those turn decimal strings
into Decimals and are not the JSON Stripe sent.
"""

from __future__ import annotations

import itertools
import math
import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import requests
import stamina
import stripe
from pyrate_limiter import Duration, Limiter, Rate

from app.json_text import json_value

STRIPE_API_BASE = "https://api.stripe.com"
PAGE_LIMIT = 100
# The SDK's own retries (5xx, 409, lock_timeout 429s, network errors, by Stripe-Should-Retry).
SDK_NETWORK_RETRIES = 2
# Ours, on top, for a rate-limited 429 (the SDK never retries it) and a connection still failing.
RATE_LIMIT_ATTEMPTS = 8
HTTP_TIMEOUT_SECONDS = 30.0


class FetchError(RuntimeError):
    """A page could not be fetched; the message says what Stripe (or the network) answered."""


# Half of Stripe's documented limits (stripe-api-sync.md §3.1: 100 requests/s per live account, 25 in
# test mode, 25 per endpoint), as the Sync Engine does: the account's own applications share them.
LIVE_MAX_RPS, LIVE_MAX_ENDPOINT_RPS = 50.0, 15.0
TEST_MAX_RPS, TEST_MAX_ENDPOINT_RPS = 10.0, 10.0


def is_live_key(api_key: str) -> bool:
    """sk_live_/rk_live_ keys are live mode; any other is treated as test mode (the lower limits)."""
    return api_key.startswith(("sk_live_", "rk_live_"))


def default_rates(api_key: str) -> tuple[float, float]:
    """(requests/s in all, requests/s per endpoint) below Stripe's limits for the key's mode."""
    if is_live_key(api_key):
        return LIVE_MAX_RPS, LIVE_MAX_ENDPOINT_RPS
    return TEST_MAX_RPS, TEST_MAX_ENDPOINT_RPS


@dataclass(frozen=True)
class StripeApi:
    """Where and how to read Stripe: the key, the address (Stripe's, or a Stripe-compatible server),
    the Connect account, the API version every response is rendered in, and the request budget (in
    all, and per endpoint; None: below Stripe's limits for the key's mode)."""

    api_key: str
    stripe_version: str
    api_base: str = STRIPE_API_BASE
    stripe_account: str | None = None
    max_rps: float | None = None
    max_endpoint_rps: float | None = None

    @property
    def rates(self) -> tuple[float, float]:
        total, endpoint = default_rates(self.api_key)
        total = self.max_rps if self.max_rps is not None else total
        endpoint = self.max_endpoint_rps if self.max_endpoint_rps is not None else min(endpoint, total)
        return total, endpoint


@dataclass(frozen=True)
class ListPage:
    """One page of a list: its objects as Stripe sent them, whether more follow, and when (Stripe's
    clock, from the response's Date header, in unix seconds) the page was read."""

    objects: list[dict[str, Any]]
    has_more: bool
    fetched_at: int
    request_id: str | None


# pyrate-limiter sleeps this much past every wait it computes: with its default, 50 ms (half the
# 100 ms window below), 8 threads got 67 requests/s of 100; with 5 ms 95, with 1 ms 98
# (bench/README.md).
LIMITER_BUFFER_MS = 1


def _limiter(max_rps: float) -> Limiter:
    """At most ``max_rps`` requests in any second, and at most a tenth of them in any 100 ms, so a
    burst cannot spend a whole second's budget at once."""
    per_second = max(1, math.floor(max_rps))
    per_tenth = max(1, math.ceil(max_rps / 10))
    rates = [Rate(per_tenth, int(Duration.SECOND) // 10), Rate(per_second, int(Duration.SECOND))]
    return Limiter(rates, buffer_ms=LIMITER_BUFFER_MS)


def _worth_backing_off(exc: BaseException) -> bool:
    """What the SDK's own quick retries leave to us, to retry after seconds rather than half-seconds:
    a rate-limited 429 (the SDK never retries one), a connection still failing, and a 5xx or 409
    still answered after the SDK's retries, unless Stripe said not to retry it."""
    if isinstance(exc, stripe.RateLimitError):
        return exc.error is None or exc.error.code != "lock_timeout"  # lock timeouts: the SDK's job
    if isinstance(exc, stripe.APIConnectionError):
        return True
    if isinstance(exc, stripe.APIError):
        status = exc.http_status or 0
        told_not_to = (exc.headers or {}).get("stripe-should-retry") == "false"
        return (status >= 500 or status == 409) and not told_not_to
    return False


def stripe_time(headers: Mapping[str, str]) -> int:
    """Unix seconds of an HTTP Date header (Stripe's clock, one-second resolution)."""
    value = headers.get("Date") or headers.get("date")
    if not value:
        raise FetchError("Stripe's answer has no Date header, so the snapshot cannot be dated")
    return int(parsedate_to_datetime(value).timestamp())


def _session(api_base: str) -> requests.Session:
    """A requests session that reads the proxy variables once: by default requests reads them and
    ~/.netrc again for every request, about a seventh of a page's CPU (bench/README.md)."""
    session = requests.Session()
    session.trust_env = False
    session.proxies.update(requests.utils.get_environ_proxies(api_base))
    return session


class StripeReader:
    """Reads list pages and objects from one account; safe to share between threads (one limiter for
    all of them, one more per endpoint)."""

    def __init__(self, api: StripeApi, client: stripe.StripeClient | None = None) -> None:
        self.api = api
        self.client = client if client is not None else self._client(api)
        total, self.endpoint_rps = api.rates
        self.limiter = _limiter(total)
        self._endpoint_limiters: dict[str, Limiter] = {}
        self.requests = 0  # requests sent, retries included
        self._count_lock = threading.Lock()

    def _acquire(self, endpoint: str) -> None:
        with self._count_lock:
            limiter = self._endpoint_limiters.get(endpoint)
            if limiter is None:
                limiter = self._endpoint_limiters[endpoint] = _limiter(self.endpoint_rps)
            self.requests += 1
        limiter.try_acquire(endpoint)
        self.limiter.try_acquire("all")

    @staticmethod
    def _client(api: StripeApi) -> stripe.StripeClient:
        return stripe.StripeClient(
            api.api_key,
            stripe_account=api.stripe_account,
            stripe_version=api.stripe_version,
            base_addresses={"api": api.api_base},
            max_network_retries=SDK_NETWORK_RETRIES,
            # Named, not left to the SDK's choice: its urllib fallback retries no network error and
            # has no timeout.
            http_client=stripe.RequestsClient(timeout=HTTP_TIMEOUT_SECONDS, session=_session(api.api_base)),
        )

    def get(
        self, path: str, params: Mapping[str, Any], *, endpoint: str | None = None
    ) -> tuple[dict[str, Any], int, str | None]:
        """One GET: the decoded body, Stripe's time, the request id. ``endpoint`` names the rate
        limit the request counts against (the path itself by default)."""
        for attempt in stamina.retry_context(
            on=_worth_backing_off, attempts=RATE_LIMIT_ATTEMPTS, wait_initial=1.0, wait_max=30.0
        ):
            with attempt:
                self._acquire(endpoint or path)
                text, headers = self._get_raw(path, params)
        try:
            body = json_value(text)
        except ValueError as exc:
            raise FetchError(f"GET {path} answered something that is not JSON: {exc}") from None
        return body, stripe_time(headers), headers.get("request-id")

    def _get_raw(self, path: str, params: Mapping[str, Any]) -> tuple[Any, Mapping[str, str]]:
        """What ``client.raw_request`` does (its request, retries and errors) but the decoding of a
        successful body, which the SDK does with the standard parser into OrderedDicts: a quarter of a
        page's CPU (bench/README.md), and the page is decoded by json_value anyway."""
        requestor = self.client._requestor
        body, status, headers = requestor.request_raw(
            "get",
            path,
            params=dict(params),
            options={},
            base_address="api",
            api_mode="V1",
            usage=["raw_request"],
        )
        if not 200 <= status < 300:
            requestor._interpret_response(body, status, headers, "V1")  # raises the SDK's error
        return body, headers

    def page(
        self,
        path: str,
        params: Mapping[str, Any] | None = None,
        starting_after: str | None = None,
        *,
        endpoint: str | None = None,
    ) -> ListPage:
        """One page of a list (``PAGE_LIMIT`` objects, newest first) after ``starting_after``."""
        query: dict[str, Any] = {**(params or {}), "limit": PAGE_LIMIT}
        if starting_after is not None:
            query["starting_after"] = starting_after
        body, fetched_at, request_id = self.get(path, query, endpoint=endpoint)
        if body.get("object") != "list" or not isinstance(body.get("data"), list):
            raise FetchError(f"GET {path} did not answer a list object")
        objects = [obj for obj in body["data"] if isinstance(obj, dict)]
        return ListPage(objects, bool(body.get("has_more")) and bool(objects), fetched_at, request_id)

    def pages(
        self, path: str, params: Mapping[str, Any] | None = None, *, endpoint: str | None = None
    ) -> Iterator[ListPage]:
        """Every page of a list, newest first, following ``starting_after``. ``params`` are the
        list's filters, sent unchanged with every page (a cursor is valid only with them)."""
        cursor: str | None = None
        while True:
            page = self.page(path, params, cursor, endpoint=endpoint)
            yield page
            if not page.has_more:
                return
            cursor = page.objects[-1]["id"]

    def retrieve(
        self, path: str, params: Mapping[str, Any] | None = None, *, endpoint: str | None = None
    ) -> tuple[dict[str, Any] | None, int, str | None]:
        """One object (``GET /v1/<resource>/<id>``): its JSON, or None when Stripe no longer has
        it (404 ``resource_missing``, or the ``deleted: true`` stub), with Stripe's time."""
        try:
            body, fetched_at, request_id = self.get(path, params or {}, endpoint=endpoint)
        except stripe.InvalidRequestError as exc:
            if exc.http_status != 404:
                raise
            return None, stripe_time(exc.headers or {}), exc.request_id
        return (None if body.get("deleted") is True else body), fetched_at, request_id


@dataclass(frozen=True)
class Window:
    """``created`` in [start, end): one slice of a list that can be fetched on its own."""

    start: int
    end: int

    def params(self) -> dict[str, Any]:
        return {"created": {"gte": self.start, "lt": self.end}}


def created_windows(start: int, end: int, count: int) -> list[Window]:
    """[start, end) cut into ``count`` windows of (nearly) equal length, newest first, none empty."""
    if end <= start:
        return []
    count = max(1, min(count, end - start))
    bounds = [start + (end - start) * number // count for number in range(count + 1)]
    return [Window(low, high) for low, high in itertools.pairwise(bounds)][::-1]


INVOICE_LINES_ENDPOINT = "/v1/invoices/{id}/lines"
INVOICE_PAYMENTS_PATH = "/v1/invoice_payments"


def complete_invoice(reader: StripeReader, invoice: dict[str, Any]) -> None:
    """Every line (and, when expanded, every payment) of an invoice whose embedded list is only the
    first page: the rest from ``/v1/invoices/{id}/lines`` (100 at a time, not the SDK's 10) and
    ``/v1/invoice_payments?invoice=``. The lists then say ``has_more: false``."""
    invoice_id = invoice.get("id")
    if not isinstance(invoice_id, str):
        return
    lines = invoice.get("lines")
    if isinstance(lines, dict) and lines.get("has_more"):
        path = f"/v1/invoices/{invoice_id}/lines"
        every = [obj for page in reader.pages(path, endpoint=INVOICE_LINES_ENDPOINT) for obj in page.objects]
        invoice["lines"] = {**lines, "data": every, "has_more": False}
    payments = invoice.get("payments")
    if isinstance(payments, dict) and payments.get("has_more"):
        listed = reader.pages(INVOICE_PAYMENTS_PATH, {"invoice": invoice_id}, endpoint=INVOICE_PAYMENTS_PATH)
        every = [obj for page in listed for obj in page.objects]
        invoice["payments"] = {**payments, "data": every, "has_more": False}


K = TypeVar("K")


def fetch_chains(
    reader: StripeReader,
    path: str,
    chains: Sequence[tuple[K, Mapping[str, Any]]],
    *,
    threads: int = 4,
    endpoint: str | None = None,
    prepare: Callable[[ListPage], None] | None = None,
) -> Iterator[tuple[K, ListPage | None]]:
    """Every page of several chains of one list (each its own filters, paged with its own cursor),
    chains fetched in parallel (the limiter keeps the total rate), in the order given as far as
    threads allow: ``(key, page)`` as pages arrive, then ``(key, None)`` once a chain is complete,
    so the caller can checkpoint it. ``prepare`` runs on each page in its fetch thread (e.g. to
    complete invoices). At most a few pages per thread wait in memory."""
    arrived: queue.Queue[tuple[K, ListPage | None] | BaseException] = queue.Queue(maxsize=2 * threads)
    stop = threading.Event()

    def fetch(key: K, params: Mapping[str, Any]) -> None:
        try:
            for page in reader.pages(path, params, endpoint=endpoint):
                if stop.is_set():
                    return
                if prepare is not None:
                    prepare(page)
                arrived.put((key, page))
            arrived.put((key, None))
        except BaseException as exc:  # handed to the caller, who stops the others
            arrived.put(exc)

    pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="billing-mirror-sync")
    try:
        for key, params in chains:
            pool.submit(fetch, key, params)
        for _ in range(len(chains)):
            while True:
                item = arrived.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item[1] is None:
                    break
    finally:
        stop.set()
        while not arrived.empty():  # unblock a thread waiting to put its page
            arrived.get_nowait()
        pool.shutdown(wait=False, cancel_futures=True)


def fetch_windows(
    reader: StripeReader, path: str, windows: list[Window], *, threads: int = 4
) -> Iterator[tuple[Window, ListPage | None]]:
    """``fetch_chains`` with one chain per ``created`` window."""
    return fetch_chains(reader, path, [(window, window.params()) for window in windows], threads=threads)
