"""``billing-mirror replay``: recorded events into a running receiver (--url) or a database (--direct)."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import click

from app.cli.options import database_url_option
from app.recording.event_files import ReadProgress, SourceItem, iter_sources
from app.recording.replay import DEFAULT_BATCH_SIZE, ReplaySummary, replay_direct, replay_http
from app.settings import Settings, split_secrets

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

# How often the bar is given new figures: asking the input file where it is costs a system call.
UPDATE_SECONDS = 0.2
# The interpreter's turns on the GIL during a replay into PostgreSQL, instead of 5 ms: one thread plans
# while another waits on the database, and after each answer the waiting one got the GIL back up to 5
# ms later while PostgreSQL idled. 0.5 ms did 7,392-8,234 events/s against 6,130-7,278; not on SQLite
# (its writer is a process: 4-9 % slower) nor in the server (5 % slower at 64 connections).
POSTGRES_REPLAY_GIL_TURN_SECONDS = 0.0005


class ReplayProgress:
    """A rich progress bar on stderr (share of the input read, events, events/s), only when stderr
    is a terminal; silent otherwise.

    ``tick`` runs per batch (--direct) or per event (--url): it counts, and passes the figures on to
    the bar at most every UPDATE_SECONDS; rich redraws it from its own thread, a few times a second.
    """

    def __init__(self, read: ReadProgress, enabled: bool | None = None) -> None:
        self.read = read
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.count = 0
        self.started = time.monotonic()
        self._updated = 0.0
        self._bar: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> ReplayProgress:
        if self.enabled:  # rich.progress is loaded only to draw: most replays run without a terminal
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn("replayed"),
                BarColumn(),
                TaskProgressColumn("{task.percentage:>3.0f}% of input,"),  # blank for stdin: size unknown
                TextColumn("{task.fields[events]:,} events, {task.fields[rate]:,.0f}/s"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                refresh_per_second=5,
            )
            self._task = self._bar.add_task("replay", total=None, events=0, rate=0.0)
            self._bar.start()
        return self

    def tick(self, number: int) -> None:
        self.count += number
        if self._bar is not None:
            now = time.monotonic()
            if now - self._updated >= UPDATE_SECONDS:
                self._updated = now
                self._update(now)

    def _update(self, now: float) -> None:
        assert self._bar is not None and self._task is not None
        self._bar.update(
            self._task,
            total=self.read.total_bytes or None,  # known once the input files are found; stdin: never
            completed=self.read.done_bytes,
            events=self.count,
            rate=self.count / max(now - self.started, 1e-9),
        )

    def __exit__(self, *exc_info: object) -> None:
        if self._bar is not None:
            self._update(time.monotonic())
            self._bar.stop()


@click.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--url", help="Post to a running receiver (its base URL or .../webhooks/stripe).")
@click.option(
    "--secret",
    "secrets",
    multiple=True,
    help="Signing secret for --url (repeatable); or STRIPE_WEBHOOK_SECRET.",
)
@click.option(
    "--concurrency",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Requests in flight with --url; above 1 the order of delivery is not kept.",
)
@click.option("--direct", is_flag=True, help="Apply to DATABASE_URL with the receiver's own code, no HTTP.")
@database_url_option("For --direct.")
@click.option(
    "--batch-size",
    default=DEFAULT_BATCH_SIZE,
    show_default=True,
    type=click.IntRange(1),
    help="Events per transaction with --direct.",
)
@click.option("--no-migrate", is_flag=True, help="With --direct: do not bring the schema up to date first.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def replay(
    paths: tuple[str, ...],
    url: str | None,
    secrets: tuple[str, ...],
    concurrency: int,
    direct: bool,
    database_url: str | None,
    batch_size: int,
    no_migrate: bool,
    as_json: bool,
) -> None:
    """Replay recorded events from PATHS (JSONL, event .json files, directories, Stripe list
    envelopes; '-' for stdin). Exits 1 when an event failed or was rejected."""
    if bool(url) == direct:
        raise click.UsageError("Give exactly one of --url URL or --direct.")
    signing = _signing_secrets(secrets) if url else []
    read = ReadProgress()
    items = iter_sources(paths, progress=read)
    summary: ReplaySummary
    with ReplayProgress(read) as progress:
        if url:
            summary = _replay_over_http(items, url, signing, concurrency, progress.tick)
        else:
            summary = _replay_into_database(items, database_url, batch_size, no_migrate, progress.tick)
    click.echo(json.dumps(summary.as_dict()) if as_json else summary.render())
    if not summary.ok:
        sys.exit(1)


def _signing_secrets(secrets: tuple[str, ...]) -> list[str]:
    signing = list(secrets) or list(split_secrets(os.environ.get("STRIPE_WEBHOOK_SECRET")))
    if not signing:
        raise click.UsageError(
            "--url needs the receiver's signing secret: --secret whsec_... or STRIPE_WEBHOOK_SECRET."
        )
    return signing


def _replay_over_http(
    items: Iterable[SourceItem],
    url: str,
    signing: list[str],
    concurrency: int,
    tick: Callable[[int], None],
) -> ReplaySummary:
    import httpx

    # The command configures no logging: stamina's note of each 503 retry would reach stderr bare.
    retries_log = logging.getLogger("stamina")
    if not retries_log.handlers:
        retries_log.addHandler(logging.NullHandler())
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with httpx.Client(timeout=30.0, limits=limits) as client:
        return replay_http(items, client, url, signing, concurrency=concurrency, on_progress=tick)


def _replay_into_database(
    items: Iterable[SourceItem],
    database_url: str | None,
    batch_size: int,
    no_migrate: bool,
    tick: Callable[[int], None],
) -> ReplaySummary:
    from app.db.engine import make_engine
    from app.ingest.store import event_store_for

    settings = Settings.from_env(database_url=database_url)
    if not no_migrate:
        from app.db.migrate import upgrade

        upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        with event_store_for(engine, settings.database_url) as store, _gil_turns_for(settings.database_url):
            return replay_direct(items, store, batch_size=batch_size, on_progress=tick)
    finally:
        engine.dispose()


@contextmanager
def _gil_turns_for(database_url: str) -> Iterator[None]:
    """Shorter turns on the GIL while replaying into PostgreSQL (POSTGRES_REPLAY_GIL_TURN_SECONDS)."""
    from app.db.engine import is_sqlite

    if is_sqlite(database_url):
        yield
        return
    before = sys.getswitchinterval()
    sys.setswitchinterval(POSTGRES_REPLAY_GIL_TURN_SECONDS)
    try:
        yield
    finally:
        sys.setswitchinterval(before)
