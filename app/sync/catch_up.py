"""``billing-mirror sync events``: catch up from Stripe's Events API after the receiver was down.

Events are read from ``GET /v1/events`` (the mirrored types only) from a start time on, and fed
through the same store-and-apply path as a webhook: one already stored (delivered by a webhook, or
read before) is a duplicate, and each outcome is recorded with the source ``events_api``.

The start is, by default, the catch-up watermark (every event created before it was read) or, before
any catch-up, the newest event the mirror holds, minus an overlap that covers events Stripe lists a
little after their ``created`` and several events of one second (stripe-api-sync.md §5.3, §6.3).
The range up to Stripe's clock now is read in windows of ``created``, in parallel; the watermark
moves up to the oldest window not yet complete, so a catch-up stopped half-way resumes there.

Stripe keeps events for 30 days: a start older than that cannot be caught up, and the report says
so (``gap_lost``): only a full ``sync`` restores what happened before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, func, select

from app.db.models import StripeEvent
from app.ingest.apply import DatabaseUnavailable, IngestResult
from app.ingest.store import EventStore
from app.json_text import json_text
from app.mirror.dispatch import SNAPSHOT_HANDLERS
from app.mirror.envelope import EnvelopeError, EventSource, event_from_json
from app.mirror.outcome import Outcome
from app.mirror.upsert import table_of
from app.sync.checkpoints import Checkpoints
from app.sync.fetch import StripeReader, Window, created_windows, fetch_chains

logger = logging.getLogger("billing_mirror.sync")

EVENTS_PATH = "/v1/events"
EVENT_HORIZON_SECONDS = 30 * 86_400
DEFAULT_OVERLAP_SECONDS = 300
MAX_TYPES_PER_REQUEST = 20  # GET /v1/events takes at most 20 `types`
WINDOW_SECONDS = 3_600  # at most this much `created` per window (an hour of events)
MAX_WINDOWS = 64


def type_filters(types: Sequence[str]) -> list[dict[str, Any]]:
    """The fewest requests that list exactly these event types: ``type=invoice.*`` for the invoice
    events (a prefix group), then ``types[]`` of at most 20 names for the others."""
    invoice = [name for name in types if name.startswith("invoice.")]
    others = sorted(name for name in types if not name.startswith("invoice."))
    filters: list[dict[str, Any]] = [{"type": "invoice.*"}] if invoice else []
    for start in range(0, len(others), MAX_TYPES_PER_REQUEST):
        filters.append({"types": others[start : start + MAX_TYPES_PER_REQUEST]})
    return filters


MIRRORED_TYPE_FILTERS = type_filters(sorted(SNAPSHOT_HANDLERS))


@dataclass
class CatchUpReport:
    since: int | None = None  # where the catch-up started (None: the mirror had nothing to start from)
    until: int | None = None  # Stripe's clock when it started: everything before is read
    horizon: int | None = None  # the oldest second Stripe still lists events of
    gap_lost: bool = False  # the start was older than the horizon: events were lost for good
    events: int = 0
    applied: int = 0
    duplicates: int = 0
    stale: int = 0
    ignored: int = 0
    failed: int = 0
    unreadable: int = 0
    windows_done: int = 0
    windows: int = 0
    failures: list[str] = field(default_factory=list)

    def count(self, result: IngestResult) -> None:
        if result.duplicate:
            self.duplicates += 1
            return
        name = result.outcome.value
        setattr(self, name, getattr(self, name) + 1)
        if result.outcome == Outcome.FAILED and len(self.failures) < 10:
            self.failures.append(f"{result.event_id}: {result.error}")

    def as_dict(self) -> dict[str, Any]:
        return {
            key: getattr(self, key)
            for key in (
                "since",
                "until",
                "horizon",
                "gap_lost",
                "events",
                "applied",
                "duplicates",
                "stale",
                "ignored",
                "failed",
                "unreadable",
            )
        }


def newest_stored_event(engine: Engine, account: str | None) -> int | None:
    """``created`` of the newest event Stripe sent that the mirror holds (webhooks and the Events API,
    not snapshots), for one account (None: the account of the key)."""
    events = table_of(StripeEvent)
    query = select(func.max(events.c.created)).where(
        events.c.source.in_([EventSource.WEBHOOK.value, EventSource.EVENTS_API.value]),
        events.c.account.is_(None) if account is None else events.c.account == account,
    )
    with engine.connect() as connection:
        value = connection.execute(query).scalar()
    return int(value) if value is not None else None


def start_of_catch_up(
    engine: Engine, checkpoints: Checkpoints, account: str | None, overlap: int
) -> int | None:
    """The default start: the watermark, else the newest stored event, minus the overlap."""
    known = checkpoints.watermark()
    if known is None:
        known = newest_stored_event(engine, account)
    return None if known is None else known - overlap


def catch_up(
    reader: StripeReader,
    engine: Engine,
    store: EventStore,
    *,
    since: int | None = None,
    overlap: int = DEFAULT_OVERLAP_SECONDS,
    threads: int = 4,
    on_progress: Callable[[CatchUpReport], None] | None = None,
) -> CatchUpReport:
    """Read and apply the mirrored events created since ``since`` (by default where the last
    catch-up, or the newest stored event, left off, minus ``overlap``) up to Stripe's clock now."""
    account = reader.api.stripe_account
    checkpoints = Checkpoints(engine, account)
    report = CatchUpReport()
    # Stripe's clock: every later request sees at least this second.
    probe, now, _ = reader.get(EVENTS_PATH, {"limit": 1}, endpoint=EVENTS_PATH)
    del probe
    report.until = now
    report.horizon = now - EVENT_HORIZON_SECONDS
    start = since if since is not None else start_of_catch_up(engine, checkpoints, account, overlap)
    report.since = start
    report.gap_lost = start is None or start < report.horizon
    begin = max(start if start is not None else report.horizon, report.horizon)
    windows = created_windows(begin, now + 1, min(MAX_WINDOWS, max(1, (now + 1 - begin) // WINDOW_SECONDS)))
    windows.sort(key=lambda window: window.start)  # oldest first: the watermark moves up sooner
    report.windows = len(windows)
    chains = [
        ((window, number), {**window.params(), **kind})
        for window in windows
        for number, kind in enumerate(MIRRORED_TYPE_FILTERS)
    ]
    chains_left = {window: len(MIRRORED_TYPE_FILTERS) for window in windows}
    pending = list(windows)
    for (window, _), page in fetch_chains(reader, EVENTS_PATH, chains, threads=threads, endpoint=EVENTS_PATH):
        if page is None:
            chains_left[window] -= 1
            if chains_left[window] == 0:
                report.windows_done += 1
                _advance_watermark(checkpoints, pending, chains_left, now)
                logger.info(
                    "catch-up: window %d..%d read (%d of %d windows)",
                    window.start,
                    window.end,
                    report.windows_done,
                    report.windows,
                )
            if on_progress is not None:
                on_progress(report)
            continue
        events = []
        for obj in page.objects:
            try:
                events.append(event_from_json(obj, json_text(obj), EventSource.EVENTS_API))
            except EnvelopeError:
                report.unreadable += 1
        report.events += len(page.objects)
        page_counts: dict[str, int] = {}
        for result in store.ingest(events, keep_order=True) if events else []:
            if isinstance(result, DatabaseUnavailable):
                raise RuntimeError(f"the database is unavailable: {result}")
            report.count(result)
            name = "duplicate" if result.duplicate else result.outcome.value
            page_counts[name] = page_counts.get(name, 0) + 1
        logger.info(
            "catch-up: page of %d events from window %d..%d stored: %s",
            len(page.objects),
            window.start,
            window.end,
            ", ".join(f"{name} {count}" for name, count in sorted(page_counts.items())) or "none",
            extra={"events": len(page.objects), "outcomes": page_counts},
        )
        if on_progress is not None:
            on_progress(report)
    return report


def _advance_watermark(
    checkpoints: Checkpoints, pending: list[Window], chains_left: dict[Window, int], now: int
) -> None:
    """Every window from the oldest up to the first incomplete one is read: the watermark moves up
    to that window's start (to the end of the range once all are read)."""
    while pending and chains_left[pending[0]] == 0:
        pending.pop(0)
    checkpoints.set_watermark(pending[0].start if pending else now + 1)
