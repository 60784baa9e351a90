"""Failed events are applied again by the receiver itself, with back-off: at start and on a schedule.

A failed event is stored (its raw body is safe), so the receiver answers its delivery 2xx and Stripe
does not retry it; the mirror does instead, through the same committer as deliveries (dedupe, guarded
writes, one transaction per batch). An event fails again until its cause is fixed (a handler bug fixed
by an upgrade, a row another event had to write first), so retries slow down: the n-th retry comes
``BASE_DELAY * 2**(n-1)`` after receipt, at most daily once that exceeds a day.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select

from app.db.models import StripeEvent
from app.ingest.apply import DatabaseUnavailable
from app.ingest.committer import Committer
from app.mirror.envelope import EnvelopeError, parse_event
from app.mirror.outcome import Outcome
from app.mirror.upsert import table_of

logger = logging.getLogger("billing_mirror.retry")

EVENTS = table_of(StripeEvent)
BASE_DELAY = timedelta(minutes=1)
DOUBLINGS = 10  # 2**10 minutes is about 17 hours; after that, one retry a day
PAGE = 500


def next_retry_at(received_at: datetime, attempts: int) -> datetime:
    """When an event received at ``received_at`` and tried ``attempts`` times is tried again."""
    doubled: timedelta = BASE_DELAY * 2 ** min(attempts - 1, DOUBLINGS)
    daily = timedelta(days=max(0, attempts - 1 - DOUBLINGS))
    return received_at + doubled + daily


def due_failed_events(engine: Engine, now: datetime) -> list[tuple[str, str, str]]:
    """(id, payload, source) of the failed events whose next retry is due, oldest first."""
    due: list[tuple[str, str, str]] = []
    after = ""
    columns = (EVENTS.c.id, EVENTS.c.received_at, EVENTS.c.attempts)
    with engine.connect() as connection:
        while True:
            query = (
                select(*columns)
                .where(EVENTS.c.outcome == Outcome.FAILED.value, EVENTS.c.id > after)
                .order_by(EVENTS.c.id)
                .limit(PAGE)
            )
            page = connection.execute(query).all()
            due_ids = [row.id for row in page if next_retry_at(_aware(row.received_at), row.attempts) <= now]
            if due_ids:
                bodies = select(EVENTS.c.id, EVENTS.c.payload, EVENTS.c.source).where(
                    EVENTS.c.id.in_(due_ids)
                )
                due.extend((row.id, row.payload, row.source) for row in connection.execute(bodies))
            if len(page) < PAGE:
                return due
            after = page[-1].id


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class FailedEventRetrier:
    """Every ``every_seconds`` (and once at start), submits the due failed events to ``committer``."""

    def __init__(self, committer: Committer, read_engine: Engine, every_seconds: float) -> None:
        self.committer = committer
        self.read_engine = read_engine
        self.every_seconds = every_seconds
        self.passes = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="billing-mirror-retrier")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.retry_due()
            except Exception:  # the database is out, say: the next pass tries again
                logger.exception("Could not look for failed events to retry")
            await asyncio.sleep(self.every_seconds)

    async def retry_due(self, now: datetime | None = None) -> dict[str, int]:
        """One pass: what became of the due failed events, counted by outcome."""
        moment = now if now is not None else datetime.now(UTC)
        due = await asyncio.to_thread(due_failed_events, self.read_engine, moment)
        counts = await self._retry(due)
        self.passes += 1
        if due:
            logger.info("Retried %d failed events: %s", len(due), counts)
        return counts

    async def _retry(self, due: Sequence[tuple[str, str, str]]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for event_id, payload, source in due:
            try:
                event = parse_event(payload.encode("utf-8"), source)
                result: Any = await self.committer.submit(event)
                name = result.outcome.value
                if result.outcome == Outcome.FAILED:
                    logger.warning("Event %s failed again: %s", event_id, result.error)
            except (EnvelopeError, DatabaseUnavailable) as exc:
                name = "unavailable" if isinstance(exc, DatabaseUnavailable) else "unreadable"
                logger.warning("Event %s was not retried: %s", event_id, exc)
            counts[name] = counts.get(name, 0) + 1
        return counts
