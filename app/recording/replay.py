"""Replay recorded events: straight into a database through EventStore, or signed over HTTP.

Both ways stream: events are read one at a time (app.recording.event_files), applied in bounded
batches (direct) or with a bounded number of requests in flight (HTTP), and tallied into one
ReplaySummary.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Protocol

import stamina

from app.ingest.apply import DatabaseUnavailable, IngestResult
from app.mirror.envelope import EnvelopeError, Event, EventSource, event_from_json
from app.mirror.outcome import Outcome
from app.recording.event_files import SourceItem, SourceProblem, SourceValue
from app.webhook.logs import WEBHOOK_PATH
from app.webhook.signature import sign_header

DEFAULT_BATCH_SIZE = 500
MAX_REASON_EXAMPLES = 3


@dataclass
class ReplaySummary:
    sent: int = 0  # events handed to the database or the server
    applied: int = 0
    duplicates: int = 0
    stale: int = 0
    ignored: int = 0
    failed: int = 0
    rejected: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def count(self, outcome: Outcome | str, duplicate: bool = False, number: int = 1) -> None:
        if duplicate:
            self.duplicates += number
            return
        name = Outcome(outcome).value  # the counters are named after the outcomes
        setattr(self, name, getattr(self, name) + number)

    def reject(self, reason: str, origin: str) -> None:
        self.rejected += 1
        self.reasons[reason] += 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < MAX_REASON_EXAMPLES:
            examples.append(origin)

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.rejected == 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "applied": self.applied,
            "duplicates": self.duplicates,
            "stale": self.stale,
            "ignored": self.ignored,
            "failed": self.failed,
            "rejected": self.rejected,
            "reasons": dict(self.reasons),
        }

    def render(self) -> str:
        counts = ", ".join(
            f"{name} {getattr(self, name)}"
            for name in ("sent", "applied", "duplicates", "stale", "ignored", "failed", "rejected")
        )
        lines = [counts]
        for reason, number in self.reasons.most_common():
            where = ", ".join(self.examples.get(reason, []))
            lines.append(f"  rejected {number}: {reason} (e.g. {where})")
        return "\n".join(lines)


def to_event(item: SourceValue) -> Event:
    """The event in a source value, or EnvelopeError saying why it is not one."""
    return event_from_json(item.body, item.raw, EventSource.REPLAY)


def _events_only(items: Iterable[SourceItem], summary: ReplaySummary) -> Iterator[tuple[SourceValue, Event]]:
    for item in items:
        if isinstance(item, SourceProblem):
            summary.reject(item.reason, item.origin)
            continue
        try:
            yield item, to_event(item)
        except EnvelopeError as exc:
            summary.reject(f"not an event envelope: {exc.message}", item.origin)


Pair = tuple[SourceValue, Event]


def _batches(pairs: Iterable[Pair], size: int) -> Iterator[list[Pair]]:
    batch: list[Pair] = []
    for pair in pairs:
        batch.append(pair)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


Tick = Callable[[int], None]


def _no_tick(_count: int) -> None:
    return None


class DirectTarget(Protocol):
    """Where replay_direct sends events: EventStore, or WriterProcessStore for two cores."""

    def ingest_in_order(
        self, batches: Iterable[Sequence[Event]]
    ) -> Iterator[list[IngestResult | DatabaseUnavailable]]: ...


def replay_direct(
    items: Iterable[SourceItem],
    store: DirectTarget,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_progress: Tick = _no_tick,
) -> ReplaySummary:
    """Apply every event through ``store`` (the receiver's own store, dedup and dispatch), in batches
    of ``batch_size`` events per transaction, in the order read."""
    summary = ReplaySummary()
    # The origins of the batches handed to the store, oldest first: all a rejection needs. The
    # decoded events themselves are freed once planned, so more batches can be in flight.
    in_flight: deque[list[str]] = deque()

    def event_batches() -> Iterator[list[Event]]:
        for batch in _batches(_events_only(items, summary), batch_size):
            in_flight.append([item.origin for item, _ in batch])
            yield [event for _, event in batch]

    with _cyclic_gc_paused():
        collected_at = 0
        for results in store.ingest_in_order(event_batches()):
            origins = in_flight.popleft()
            _tally_batch(summary, origins, results)
            on_progress(len(origins))
            if summary.sent - collected_at >= GC_EVERY_EVENTS:
                collected_at = summary.sent
                gc.collect()
    return summary


GC_EVERY_EVENTS = 40_000


@contextlib.contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Decoded events are trees, freed by reference counting; but a batch of them is hundreds of
    thousands of containers, and the automatic cyclic collector would keep traversing them. It is
    paused during a replay and run every GC_EVERY_EVENTS instead, with what was allocated before
    (modules, the engine) frozen out of its way."""
    was_enabled = gc.isenabled()
    gc.disable()
    # Not when something else froze objects first (a receiver in the same process): unfreezing
    # would thaw its objects too.
    freezing = gc.get_freeze_count() == 0
    if freezing:
        gc.freeze()
    try:
        yield
    finally:
        if freezing:
            gc.unfreeze()
        if was_enabled:
            gc.enable()


def _tally_batch(
    summary: ReplaySummary, origins: Sequence[str], results: Sequence[IngestResult | DatabaseUnavailable]
) -> None:
    """Count a batch's results: grouped first, since a replay tallies every one of millions."""
    if len(results) != len(origins):
        raise ValueError(f"{len(results)} results for a batch of {len(origins)} events")
    counts: Counter[tuple[Outcome, bool] | None] = Counter(
        (result.outcome, result.duplicate) if type(result) is IngestResult else None for result in results
    )
    summary.sent += len(origins)
    for key, number in counts.items():
        if key is None:  # unavailable: rejected below, one by one with its origin
            continue
        summary.count(*key, number=number)
    if None in counts:
        for origin, result in zip(origins, results, strict=True):
            if isinstance(result, DatabaseUnavailable):
                summary.reject(str(result), origin)


class Poster(Protocol):
    """What replay_http needs of an HTTP client: httpx.Client and Starlette's TestClient both fit."""

    def post(self, url: str, *, content: bytes, headers: dict[str, str]) -> Any: ...


KNOWN_OUTCOMES = frozenset(outcome.value for outcome in Outcome)


@dataclass(frozen=True)
class Answer:
    """How the endpoint answered one delivery."""

    outcome: str | None = None  # applied | stale | ignored | failed
    duplicate: bool = False
    rejection: str | None = None


def classify(status: int, body: Any) -> Answer:
    """Read the endpoint's JSON answer: {"received": true, ...} or {"error": {...}}."""
    if status == 200 and isinstance(body, dict) and body.get("received") is True:
        outcome = body.get("outcome")
        if outcome not in KNOWN_OUTCOMES:
            return Answer(rejection=f"200 with an unknown outcome {outcome!r}")
        return Answer(outcome=str(outcome), duplicate=bool(body.get("duplicate")))
    error = body.get("error") if isinstance(body, dict) else None
    if status == 500 and isinstance(error, dict) and error.get("type") == "handler_error":
        return Answer(outcome=Outcome.FAILED.value)
    if isinstance(error, dict):
        kind = error.get("code") or error.get("type")
        return Answer(rejection=f"{status} {kind}: {error.get('message')}")
    return Answer(rejection=f"{status} from the server (not a billing-mirror answer)")


class _Unavailable(Exception):
    """A 503 answer, raised so that stamina retries the delivery; the last one is classified."""

    def __init__(self, response: Any) -> None:
        super().__init__(response.status_code)
        self.response = response


class _NotDelivered(Exception):
    """The request itself failed (connection refused, reset, timeout): the event did not arrive."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")


def _post_signed(client: Poster, url: str, body: bytes, secrets: str | list[str]) -> Any:
    # time.time() is looked up at each call (not bound once), so a frozen clock signs too.
    signature = sign_header(body, secrets, int(time.time()))
    headers = {"Stripe-Signature": signature, "Content-Type": "application/json"}
    try:
        response = client.post(url, content=body, headers=headers)
    except Exception as exc:
        raise _NotDelivered(exc) from exc
    if response.status_code == 503:
        raise _Unavailable(response)
    return response


def deliver(
    client: Poster,
    url: str,
    body: bytes,
    secrets: str | list[str],
    *,
    retries_when_unavailable: int = 3,
) -> Answer:
    """Sign ``body`` at the current time and post it; a 503 is retried (signed anew) after a short,
    growing pause with jitter, at most ``retries_when_unavailable`` times."""
    try:
        for attempt in stamina.retry_context(
            on=_Unavailable,
            attempts=retries_when_unavailable + 1,
            timeout=None,
            wait_initial=0.2,
            wait_max=2.0,
            wait_jitter=0.1,
        ):
            with attempt:
                response = _post_signed(client, url, body, secrets)
    except _Unavailable as last:
        response = last.response
    except _NotDelivered as failure:  # reported, not retried
        return Answer(rejection=f"request failed: {failure}")
    try:
        payload = response.json()
    except ValueError:
        payload = None
    return classify(response.status_code, payload)


def _count_answer(summary: ReplaySummary, answer: Answer, origin: str) -> None:
    summary.sent += 1
    if answer.rejection is not None:
        summary.reject(answer.rejection, origin)
    else:
        summary.count(answer.outcome or Outcome.FAILED, answer.duplicate)


def webhook_url(base: str) -> str:
    """Accept either the server's base URL or the full endpoint URL."""
    base = base.rstrip("/")
    return base if base.endswith(WEBHOOK_PATH) else base + WEBHOOK_PATH


def replay_http(
    items: Iterable[SourceItem],
    client: Poster,
    url: str,
    secrets: str | list[str],
    *,
    concurrency: int = 1,
    on_progress: Tick = _no_tick,
) -> ReplaySummary:
    """Post every event to a running receiver, re-signed now; ``concurrency`` requests in flight.

    The body sent is the recorded text itself (JSONL lines, event files); only events taken out of a
    list envelope are re-serialized.
    """
    summary = ReplaySummary()
    target = webhook_url(url)

    def settle(done: Iterable[Future[Answer]], pending: dict[Future[Answer], str]) -> None:
        for future in done:
            _count_answer(summary, future.result(), pending.pop(future))
            on_progress(1)

    if concurrency <= 1:  # in order, on the caller's thread
        for item, event in _events_only(items, summary):
            _count_answer(summary, deliver(client, target, event.raw.encode("utf-8"), secrets), item.origin)
            on_progress(1)
        return summary

    pending: dict[Future[Answer], str] = {}
    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="replay") as pool:
        for item, event in _events_only(items, summary):
            body = event.raw.encode("utf-8")
            pending[pool.submit(deliver, client, target, body, secrets)] = item.origin
            if len(pending) >= concurrency * 2:
                done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                settle(done, pending)
        done, _ = wait(list(pending))
        settle(done, pending)
    return summary
