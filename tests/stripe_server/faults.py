"""What the server does besides answering: token-bucket rate limits, injected faults chosen by rule, and
the log of every request it received."""

from __future__ import annotations

import random
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.stripe_server.errors import ApiError
from tests.stripe_server.store import ServerClock, Store

RATE_LIMIT_MESSAGE = "Request rate limit exceeded. You can learn more about rate limits here https://stripe.com/docs/rate-limits."
LOCK_TIMEOUT_MESSAGE = (
    "This object cannot be accessed right now because another API request or Stripe process is currently "
    "accessing it. If you see this error intermittently, retry the request. If you see this error frequently "
    "and are making multiple concurrent requests to a single object, make your requests serially or at a "
    "lower rate. See https://stripe.com/docs/rate-limits for more information."
)


def rate_limit_error(reason: str = "global-rate") -> ApiError:
    """Stripe's rate limiter: 429 `rate_limit` naming the limiter, and no Stripe-Should-Retry."""
    return ApiError(
        429, RATE_LIMIT_MESSAGE, code="rate_limit", headers={"Stripe-Rate-Limited-Reason": reason}
    )


def lock_timeout_error() -> ApiError:
    """A 429 that is not a rate limit: no Stripe-Rate-Limited-Reason, and the SDK is told to retry."""
    return ApiError(429, LOCK_TIMEOUT_MESSAGE, code="lock_timeout", headers={"Stripe-Should-Retry": "true"})


def api_error(*, should_retry: bool = True) -> ApiError:
    """A transient 500 whose Stripe-Should-Retry says whether the SDK may retry it."""
    return ApiError(
        500,
        "An unknown error occurred. Please try again.",
        error_type="api_error",
        headers={"Stripe-Should-Retry": "true" if should_retry else "false"},
    )


@dataclass
class Delay:
    """Answer normally, but only after ``seconds`` (a slow page)."""

    seconds: float


@dataclass
class Mutate:
    """After the request is answered, change the data (objects that change between two pages)."""

    change: Callable[[Store], None]


Fault = ApiError | Delay | Mutate


@dataclass
class FaultRule:
    """Which requests get ``fault``: those whose path fully matches ``path`` (a regex; None: any), and among
    them the ``nth`` ones (1-based; None: all), each with ``probability``, at most ``times`` in all."""

    fault: Fault
    path: str | None = None
    nth: tuple[int, ...] | None = None
    probability: float = 1.0
    times: int | None = None
    seen: int = 0
    fired: int = 0

    def applies(self, path: str, chance: random.Random) -> bool:
        if self.path is not None and re.fullmatch(self.path, path) is None:
            return False
        self.seen += 1
        if self.nth is not None and self.seen not in self.nth:
            return False
        if self.times is not None and self.fired >= self.times:
            return False
        if self.probability < 1.0 and chance.random() >= self.probability:
            return False
        self.fired += 1
        return True


class Faults:
    """The rules, in the order added; a request gets the first error that applies, and every delay and
    mutation that applies."""

    def __init__(self, seed: int = 0) -> None:
        self.rules: list[FaultRule] = []
        self._chance = random.Random(seed)
        self._lock = threading.Lock()

    def add(
        self,
        fault: Fault,
        *,
        path: str | None = None,
        nth: int | tuple[int, ...] | None = None,
        probability: float = 1.0,
        times: int | None = None,
    ) -> FaultRule:
        rule = FaultRule(fault, path, (nth,) if isinstance(nth, int) else nth, probability, times)
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def for_request(self, path: str) -> list[Fault]:
        with self._lock:
            chosen: list[Fault] = []
            for rule in self.rules:
                is_error = isinstance(rule.fault, ApiError)
                if is_error and any(isinstance(fault, ApiError) for fault in chosen):
                    continue  # one error per request; later error rules do not count this request
                if rule.applies(path, self._chance):
                    chosen.append(rule.fault)
            return chosen


class TokenBucket:
    """``rate`` tokens a second, up to ``rate`` held (Stripe's limits are per second)."""

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.tokens = rate
        self.updated = now

    def refill(self, now: float) -> None:
        self.tokens = min(self.rate, self.tokens + (now - self.updated) * self.rate)
        self.updated = now


class RateLimits:
    """Stripe's rate limiter, off until enabled: one bucket per account (``global-rate``) and one per account
    and endpoint (``endpoint-rate``); a request needs a token from both. Time is the server clock."""

    def __init__(self, clock: ServerClock) -> None:
        self.clock = clock
        self.enabled = False
        self.global_rate = 25.0
        self.endpoint_rate = 25.0
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self._lock = threading.Lock()

    def enable(self, *, global_rate: float = 25.0, endpoint_rate: float = 25.0) -> None:
        with self._lock:
            self.enabled, self.global_rate, self.endpoint_rate = True, global_rate, endpoint_rate
            self._buckets.clear()

    def disable(self) -> None:
        with self._lock:
            self.enabled = False
            self._buckets.clear()

    def take(self, account: str, endpoint: str) -> None:
        """Raise the 429 of the limiter that is out of tokens."""
        if not self.enabled:
            return
        with self._lock:
            now = self.clock.now()
            account_bucket = self._bucket((account, ""), self.global_rate, now)
            endpoint_bucket = self._bucket((account, endpoint), self.endpoint_rate, now)
            if account_bucket.tokens < 1:
                raise rate_limit_error("global-rate")
            if endpoint_bucket.tokens < 1:
                raise rate_limit_error("endpoint-rate")
            account_bucket.tokens -= 1
            endpoint_bucket.tokens -= 1

    def _bucket(self, key: tuple[str, str], rate: float, now: float) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(rate, now)
        bucket.refill(now)
        return bucket


@dataclass(frozen=True)
class LoggedRequest:
    """One request as the server saw it and how it answered."""

    method: str
    path: str
    query: str
    params: dict[str, Any] | None  # None when the query string did not parse
    headers: dict[str, str]  # lower-case names
    request_id: str
    status: int
    server_time: float  # the server clock
    monotonic: float  # the real clock at arrival, for intervals between attempts
    account: str | None
    endpoint: str | None  # e.g. "GET /v1/invoices/{id}", None for an unknown URL


@dataclass
class RequestLog:
    entries: list[LoggedRequest] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def append(self, entry: LoggedRequest) -> None:
        with self._lock:
            self.entries.append(entry)

    def clear(self) -> None:
        with self._lock:
            self.entries.clear()

    def matching(self, path: str | None = None, *, method: str = "GET") -> list[LoggedRequest]:
        """The requests whose path fully matches ``path`` (a regex), oldest first."""
        with self._lock:
            return [
                entry
                for entry in self.entries
                if entry.method == method and (path is None or re.fullmatch(path, entry.path))
            ]
