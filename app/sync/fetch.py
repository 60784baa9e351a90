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
import json
import math
import queue
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import stamina
import stripe
from pyrate_limiter import Duration, Limiter, Rate

STRIPE_API_BASE = "https://api.stripe.com"
PAGE_LIMIT = 100
# The SDK's own retries (5xx, 409, lock_timeout 429s, network errors, by Stripe-Should-Retry).
SDK_NETWORK_RETRIES = 2
# Ours, on top, for a rate-limited 429 (the SDK never retries it) and a connection still failing.
RATE_LIMIT_ATTEMPTS = 8
HTTP_TIMEOUT_SECONDS = 30.0


class FetchError(RuntimeError):
    """A page could not be fetched; the message says what Stripe (or the network) answered."""


@dataclass(frozen=True)
class StripeApi:
    """Where and how to read Stripe: the key, the address (Stripe's, or a Stripe-compatible server),
    the Connect account, the API version every response is rendered in, and the request budget."""

    api_key: str
    stripe_version: str
    api_base: str = STRIPE_API_BASE
    stripe_account: str | None = None
    max_rps: float = 10.0


@dataclass(frozen=True)
class ListPage:
    """One page of a list: its objects as Stripe sent them, whether more follow, and when (Stripe's
    clock, from the response's Date header, in unix seconds) the page was read."""

    objects: list[dict[str, Any]]
    has_more: bool
    fetched_at: int
    request_id: str | None


def _limiter(max_rps: float) -> Limiter:
    """At most ``max_rps`` requests in any second, and at most a tenth of them in any 100 ms, so a
    burst cannot spend a whole second's budget at once."""
    per_second = max(1, math.floor(max_rps))
    per_tenth = max(1, math.ceil(max_rps / 10))
    return Limiter([Rate(per_tenth, int(Duration.SECOND) // 10), Rate(per_second, int(Duration.SECOND))])


def _worth_backing_off(exc: Exception) -> bool:
    """A rate-limited 429 or a connection still failing: what the SDK's own retries leave to us."""
    if isinstance(exc, stripe.RateLimitError):
        return exc.error is None or exc.error.code != "lock_timeout"  # lock timeouts: the SDK's job
    return isinstance(exc, stripe.APIConnectionError)


def stripe_time(headers: Mapping[str, str]) -> int:
    """Unix seconds of an HTTP Date header (Stripe's clock, one-second resolution)."""
    value = headers.get("Date") or headers.get("date")
    if not value:
        raise FetchError("Stripe's answer has no Date header, so the snapshot cannot be dated")
    return int(parsedate_to_datetime(value).timestamp())


class StripeReader:
    """Reads list pages from one account; safe to share between threads (one limiter for all)."""

    def __init__(self, api: StripeApi, client: stripe.StripeClient | None = None) -> None:
        self.api = api
        self.client = client if client is not None else self._client(api)
        self.limiter = _limiter(api.max_rps)
        self.requests = 0  # requests sent, retries included
        self._count_lock = threading.Lock()

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
            http_client=stripe.RequestsClient(timeout=HTTP_TIMEOUT_SECONDS),
        )

    def get(self, path: str, params: Mapping[str, Any]) -> tuple[dict[str, Any], int, str | None]:
        """One GET: the decoded body, Stripe's time, the request id."""
        for attempt in stamina.retry_context(
            on=_worth_backing_off, attempts=RATE_LIMIT_ATTEMPTS, wait_initial=1.0, wait_max=30.0
        ):
            with attempt:
                self.limiter.try_acquire(path)
                with self._count_lock:
                    self.requests += 1
                response = self.client.raw_request("get", path, **params)
        try:
            body = json.loads(response.body)
        except ValueError as exc:
            raise FetchError(f"GET {path} answered something that is not JSON: {exc}") from None
        return body, stripe_time(response.headers), response.request_id

    def pages(self, path: str, params: Mapping[str, Any] | None = None) -> Iterator[ListPage]:
        """Every page of a list, newest first, ``PAGE_LIMIT`` objects at a time, following
        ``starting_after``. ``params`` are the list's filters."""
        query: dict[str, Any] = {**(params or {}), "limit": PAGE_LIMIT}
        while True:
            body, fetched_at, request_id = self.get(path, query)
            if body.get("object") != "list" or not isinstance(body.get("data"), list):
                raise FetchError(f"GET {path} did not answer a list object")
            objects = [obj for obj in body["data"] if isinstance(obj, dict)]
            has_more = bool(body.get("has_more"))
            yield ListPage(objects, has_more, fetched_at, request_id)
            if not has_more or not objects:
                return
            query["starting_after"] = objects[-1]["id"]


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


def fetch_windows(
    reader: StripeReader, path: str, windows: list[Window], *, threads: int = 4
) -> Iterator[tuple[Window, ListPage | None]]:
    """The pages of every window, windows fetched in parallel (the limiter keeps the total rate):
    ``(window, page)`` as pages arrive, then ``(window, None)`` once a window is complete, so the
    caller can checkpoint it. At most a few pages per thread wait in memory."""
    arrived: queue.Queue[tuple[Window, ListPage | None] | BaseException] = queue.Queue(maxsize=2 * threads)
    stop = threading.Event()

    def fetch(window: Window) -> None:
        try:
            for page in reader.pages(path, window.params()):
                if stop.is_set():
                    return
                arrived.put((window, page))
            arrived.put((window, None))
        except BaseException as exc:  # handed to the caller, who stops the others
            arrived.put(exc)

    pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="billing-mirror-sync")
    try:
        for window in windows:
            pool.submit(fetch, window)
        for _ in range(len(windows)):
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
