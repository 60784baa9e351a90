"""``billing-mirror replay``: recorded events into a running receiver (--url) or a database (--direct)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable

import click

from app.recording.event_files import ReadProgress, SourceItem, iter_sources
from app.recording.replay import DEFAULT_BATCH_SIZE, ReplaySummary, replay_direct, replay_http
from app.settings import Settings, split_secrets


class Progress:
    """A one-line counter on stderr, only when stderr is a terminal; silent otherwise."""

    def __init__(self, read: ReadProgress, enabled: bool | None = None) -> None:
        self.read = read
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.count = 0
        self.started = time.monotonic()
        self._shown = 0.0

    def tick(self, number: int) -> None:
        self.count += number
        now = time.monotonic()
        if self.enabled and now - self._shown >= 0.2:
            self._shown = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        rate = self.count / max(now - self.started, 1e-9)
        share = ""
        if self.read.total_bytes:
            share = f" {min(100.0, 100.0 * self.read.done_bytes / self.read.total_bytes):5.1f}% of input,"
        click.echo(f"\r replayed {self.count} events,{share} {rate:,.0f}/s ", err=True, nl=False)

    def close(self) -> None:
        if self.enabled:
            self._draw(time.monotonic())
            click.echo("", err=True)


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
@click.option("--database-url", envvar="DATABASE_URL", help="For --direct. Defaults to a SQLite file here.")
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
    read = ReadProgress()
    progress = Progress(read)
    items = iter_sources(paths, progress=read)
    summary: ReplaySummary
    if url:
        summary = _replay_over_http(items, url, secrets, concurrency, progress.tick)
    else:
        summary = _replay_into_database(items, database_url, batch_size, no_migrate, progress.tick)
    progress.close()
    click.echo(json.dumps(summary.as_dict()) if as_json else summary.render())
    if not summary.ok:
        sys.exit(1)


def _replay_over_http(
    items: Iterable[SourceItem],
    url: str,
    secrets: tuple[str, ...],
    concurrency: int,
    tick: Callable[[int], None],
) -> ReplaySummary:
    import httpx

    signing = list(secrets) or list(split_secrets(os.environ.get("STRIPE_WEBHOOK_SECRET")))
    if not signing:
        raise click.UsageError(
            "--url needs the receiver's signing secret: --secret whsec_... or STRIPE_WEBHOOK_SECRET."
        )
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
        with event_store_for(engine, settings.database_url) as store:
            return replay_direct(items, store, batch_size=batch_size, on_progress=tick)
    finally:
        engine.dispose()
