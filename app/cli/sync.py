"""``billing-mirror sync [RESOURCE...]``, ``sync events`` and ``reconcile``: read Stripe's API into the
mirror, catch up from the Events API, and check the mirror against Stripe."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click
from sqlalchemy import Engine

from app.cli.options import database_url_option, unix_seconds
from app.settings import ConfigurationError, Settings
from app.timestamps import format_duration, format_time, parse_duration

F = TypeVar("F", bound=Callable[..., Any])
EXIT_DRIFT = 1
EXIT_FAILED = 1
EXIT_GAP_LOST = 3


def stripe_options(command: F) -> F:
    """The options of every command that reads Stripe's API."""
    options = [
        click.option(
            "--api-key",
            envvar="STRIPE_API_KEY",
            help="Stripe key (read access is enough); or STRIPE_API_KEY.",
        ),
        click.option(
            "--api-base",
            envvar="STRIPE_API_BASE",
            help="Stripe's address, or a Stripe-compatible server's (default https://api.stripe.com).",
        ),
        click.option(
            "--stripe-account", envvar="STRIPE_ACCOUNT", help="A Connect account (acct_...) to read."
        ),
        click.option(
            "--api-version",
            envvar="STRIPE_API_VERSION",
            help="API version to request: your webhook endpoint's (default: the one the mirror reads).",
        ),
        click.option(
            "--max-rps",
            type=click.FloatRange(min=0.1),
            help="Requests per second in all (default 50 with a live key, 10 with a test key).",
        ),
        click.option(
            "--max-endpoint-rps",
            type=click.FloatRange(min=0.1),
            help="Requests per second to one endpoint (default 15 live, 10 test).",
        ),
        click.option(
            "--threads",
            type=click.IntRange(1, 64),
            default=8,
            show_default=True,
            help="Requests in parallel.",
        ),
        database_url_option(),
        click.option("--no-migrate", is_flag=True, help="Do not bring the schema up to date first."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@contextmanager
def _connected(options: dict[str, Any]) -> Iterator[tuple[Settings, Any, Engine]]:
    """Settings, a StripeReader and the mirror's engine, from the options and the environment."""
    import stripe

    from app.db.engine import make_engine
    from app.sync.fetch import FetchError, StripeApi, StripeReader

    try:
        settings = Settings.from_env(
            database_url=options["database_url"],
            stripe_api_key=options["api_key"],
            stripe_api_base=options["api_base"],
            stripe_account=options["stripe_account"],
            stripe_api_version=options["api_version"],
        )
        api_key = settings.require_api_key()
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from None
    if not options["no_migrate"]:
        from app.db.migrate import upgrade

        upgrade(settings.database_url)
    api = StripeApi(
        api_key,
        settings.stripe_api_version,
        api_base=settings.stripe_api_base,
        stripe_account=settings.stripe_account,
        max_rps=options["max_rps"],
        max_endpoint_rps=options["max_endpoint_rps"],
    )
    engine = make_engine(settings.database_url)
    try:
        yield settings, StripeReader(api), engine
    except (stripe.StripeError, FetchError) as exc:
        # What Stripe (or the network) answered, once retries gave up: said plainly, no traceback.
        status = getattr(exc, "http_status", None)
        answered = f" ({status})" if status else ""
        raise click.ClickException(f"Stripe's API answered{answered}: {type(exc).__name__}: {exc}") from None
    finally:
        engine.dispose()


@contextmanager
def _only_one(kind: str, settings: Settings, engine: Engine) -> Iterator[None]:
    """The lock of this kind of sync for the account (shared with receivers), or a clear refusal."""
    from app.sync.background import exclusive, lock_name

    with exclusive(engine, settings.database_url, lock_name(kind, settings.stripe_account)) as held:
        if not held:
            account = settings.stripe_account or "the account of the key"
            raise click.ClickException(f"another {kind} of {account} is running on this database; try later")
        yield


@click.command("sync")
@click.argument("resources", nargs=-1)
@stripe_options
@click.option("--full", is_flag=True, help="Start over instead of continuing from the checkpoints.")
@click.option(
    "--since", callback=unix_seconds, help="sync events: from this time (unix seconds or ISO 8601, UTC)."
)
@click.option(
    "--overlap", default="300s", show_default=True, help="sync events: read again this much before the start."
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def sync(
    resources: tuple[str, ...], full: bool, since: int | None, overlap: str, as_json: bool, **options: Any
) -> None:
    """Backfill the mirror from Stripe's lists: RESOURCE is any of invoices, invoiceitems (items),
    invoice_payments (payments), meters, alerts, templates; all of them by default. A sync stopped
    half-way continues from its checkpoints when started again.

    `sync events` instead catches up from the Events API: every mirrored event since the newest one
    the mirror holds (or --since), applied as a webhook would be."""
    if resources == ("events",):
        _catch_up(since, overlap, as_json, options)
        return
    if "events" in resources:
        raise click.UsageError("'events' is a sync of its own: billing-mirror sync events [--since TIME]")
    if since is not None:
        raise click.UsageError("--since is for 'sync events'")
    from app.ingest.store import event_store_for
    from app.sync.backfill import Backfill, SyncFailed
    from app.sync.resources import resolve

    try:
        chosen = resolve(list(resources))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    with (
        _connected(options) as (settings, reader, engine),
        _only_one("sync", settings, engine),
        SyncDisplay(reader) as display,
        event_store_for(engine, settings.database_url) as store,
    ):
        backfill = Backfill(reader, engine, store, threads=options["threads"], on_progress=display.update)
        try:
            report = backfill.run(chosen, full=full)
        except SyncFailed as exc:
            display.stop()
            raise click.ClickException(f"sync stopped: {exc}. Run it again to continue from here.") from None
    failed = sum(progress.failed for progress in report)
    if as_json:
        click.echo(json.dumps([_progress_dict(progress) for progress in report]))
    else:
        for progress in report:
            click.echo(_progress_line(progress))
        if failed:
            click.echo(
                f"{failed} pages are stored as failed events: see"
                " `billing-mirror events list --status failed`, apply them again with"
                " `billing-mirror events retry --failed`",
                err=True,
            )
    if failed:
        sys.exit(EXIT_FAILED)


def _progress_dict(progress: Any) -> dict[str, Any]:
    return {
        "resource": progress.resource.name,
        "objects": progress.objects,
        "pages": progress.pages,
        "windows": progress.windows_done,
        "applied": progress.applied,
        "stale": progress.stale,
        "failed": progress.failed,
        "refreshed": progress.refreshed,
        "already_synced": progress.already_synced,
        "seconds": round(time.monotonic() - progress.started, 3),
    }


def _progress_line(progress: Any) -> str:
    name = progress.resource.name
    if progress.already_synced:
        return f"{name}: already synced (billing-mirror sync {name} --full starts over)"
    elapsed = format_duration(time.monotonic() - progress.started)
    refreshed = f", {progress.refreshed} read again after a same-second event" if progress.refreshed else ""
    return (
        f"{name}: {progress.objects:,} objects in {progress.pages:,} pages ({progress.applied:,} changed"
        f" the mirror, {progress.stale:,} already there, {progress.failed:,} failed){refreshed} in {elapsed}"
    )


class SyncDisplay:
    """Objects per resource, requests per second and an estimate of the time left: a live table on
    stderr when it is a terminal, a line every few seconds otherwise."""

    PLAIN_EVERY = 10.0

    def __init__(self, reader: Any, enabled: bool | None = None) -> None:
        self.reader = reader
        self.live_table = sys.stderr.isatty() if enabled is None else enabled
        self.started = time.monotonic()
        self._live: Any = None
        self._printed = 0.0
        self._last: list[Any] = []

    def __enter__(self) -> SyncDisplay:
        if self.live_table:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(self._table([]), console=Console(stderr=True), refresh_per_second=4)
            self._live.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self._live is not None:
            self._live.update(self._table(self._last))
            self._live.stop()
            self._live = None

    def update(self, progress: list[Any]) -> None:
        self._last = progress
        now = time.monotonic()
        if self._live is not None:
            self._live.update(self._table(progress))
        elif now - self._printed >= self.PLAIN_EVERY:
            self._printed = now
            parts = [f"{item.resource.name} {item.objects:,}" for item in progress]
            click.echo(f"sync: {', '.join(parts)} objects; {self._rate():.1f} requests/s", err=True)

    def _rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.reader.requests / elapsed if elapsed > 0 else 0.0

    def _table(self, progress: list[Any]) -> Any:
        from rich.table import Table

        table = Table(
            title="billing-mirror sync", caption=f"{self.reader.requests:,} requests, {self._rate():.1f}/s"
        )
        for column in (
            "resource",
            "objects",
            "pages",
            "windows done/open",
            "objects/s",
            "elapsed",
            "left (estimate)",
        ):
            table.add_column(column, justify="left" if column == "resource" else "right")
        for item in progress:
            elapsed = time.monotonic() - item.started
            if item.already_synced:
                table.add_row(item.resource.name, f"{item.objects:,}", "", "", "", "", "already synced")
                continue
            estimate = item.estimate_seconds(elapsed)
            left = "done" if item.finished else ("?" if estimate is None else format_duration(estimate))
            table.add_row(
                item.resource.name,
                f"{item.objects:,}",
                f"{item.pages:,}",
                f"{item.windows_done}/{item.windows_open}",
                f"{item.objects / elapsed:,.0f}" if elapsed > 0 else "",
                format_duration(elapsed),
                left,
            )
        return table


def _catch_up(since: int | None, overlap_text: str, as_json: bool, options: dict[str, Any]) -> None:
    from app.ingest.store import EventStore
    from app.sync.catch_up import catch_up

    try:
        overlap = parse_duration(overlap_text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--overlap") from None
    with _connected(options) as (settings, reader, engine), _only_one("catch-up", settings, engine):
        report = catch_up(
            reader, engine, EventStore(engine), since=since, overlap=overlap, threads=options["threads"]
        )
    if as_json:
        click.echo(json.dumps(report.as_dict()))
    else:
        click.echo(
            f"events since {_when(report.since)}: {report.events:,} read, {report.applied:,} applied,"
            f" {report.duplicates:,} already stored, {report.stale:,} stale, {report.ignored:,} ignored,"
            f" {report.failed:,} failed"
        )
    if report.gap_lost:
        start = (
            "the mirror holds no event yet"
            if report.since is None
            else f"the mirror's newest event is from {_when(report.since)}"
        )
        click.echo(
            f"warning: {start}, older than {format_time(report.horizon or 0, zulu=True)}, the horizon of"
            " Stripe's Events API (30 days): events before it are lost to the Events API. Run"
            " `billing-mirror sync --full` to read every object again.",
            err=True,
        )
        sys.exit(EXIT_GAP_LOST)
    if report.failed:
        sys.exit(EXIT_FAILED)


def _when(seconds: int | None) -> str:
    return "the start" if seconds is None else format_time(seconds, zulu=True)


SHOWN_DIFFERENCES = 50


@click.command("reconcile")
@click.argument("resources", nargs=-1)
@stripe_options
@click.option("--fix", is_flag=True, help="Apply Stripe's current snapshot of every object that differs.")
@click.option(
    "--since", callback=unix_seconds, help="Only objects created from this time (unix seconds or ISO 8601)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def reconcile(
    resources: tuple[str, ...], fix: bool, since: int | None, as_json: bool, **options: Any
) -> None:
    """Compare the mirror with Stripe object by object (RESOURCE as for sync; all by default): objects
    missing from the mirror, extra in it, or different. Exits 1 when something differs (with --fix:
    when something differs that could not be fixed)."""
    from app.ingest.store import EventStore
    from app.sync.reconcile import Reconcile
    from app.sync.resources import resolve

    try:
        chosen = resolve(list(resources))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    with _connected(options) as (_settings, reader, engine):
        checker = Reconcile(
            reader, engine, EventStore(engine), fix=fix, threads=options["threads"], since=since
        )
        report = checker.run(chosen)
    if as_json:
        click.echo(json.dumps(report.as_dict()))
    else:
        for check in report.checks:
            fixed = sum(1 for difference in check.differences if difference.fixed)
            click.echo(
                f"{check.resource}: {check.in_stripe:,} in Stripe, {check.in_mirror:,} in the mirror;"
                f" {check.count('missing'):,} missing, {check.count('extra'):,} extra,"
                f" {check.count('different'):,} different" + (f", {fixed:,} fixed" if fix else "")
            )
            for difference in check.differences[:SHOWN_DIFFERENCES]:
                fields = f" ({', '.join(difference.fields)})" if difference.fields else ""
                note = f": {difference.note}" if difference.note else ""
                state = " [fixed]" if difference.fixed else ""
                click.echo(f"  {difference.kind} {difference.object_id}{fields}{note}{state}")
            if len(check.differences) > SHOWN_DIFFERENCES:
                click.echo(
                    f"  ... and {len(check.differences) - SHOWN_DIFFERENCES:,} more (--json lists all)"
                )
    if report.drift:
        sys.exit(EXIT_DRIFT)
