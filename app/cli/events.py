"""``billing-mirror events``: export, list, show and retry the stored events."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click
from sqlalchemy import Engine

from app.cli.options import database_url_option, unix_seconds
from app.cli.tables import print_table
from app.mirror.outcome import Outcome
from app.recording.stored_events import (
    OUTCOMES,
    EventFilter,
    count_dead_letters,
    failed_event_ids,
    get_event,
    iter_payloads,
    list_dead_letters,
    list_events,
    retry_events,
    single_line,
)
from app.settings import Settings
from app.timestamps import format_time, parse_duration

logger = logging.getLogger("billing_mirror.prune")


def filter_options(function: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--since",
            metavar="TIME",
            callback=unix_seconds,
            help="Events created at or after (unix seconds or ISO 8601).",
        ),
        click.option(
            "--until",
            metavar="TIME",
            callback=unix_seconds,
            help="Events created before (unix seconds or ISO 8601).",
        ),
        click.option(
            "--type", "types", multiple=True, help="Event type (repeatable; 'invoice.*' for a prefix)."
        ),
        click.option(
            "--status", "statuses", multiple=True, type=click.Choice(OUTCOMES), help="Outcome (repeatable)."
        ),
        database_url_option(),
    ]
    for option in reversed(options):
        function = option(function)
    return function


@contextmanager
def read_engine(database_url: str | None) -> Iterator[Engine]:
    from app.db.engine import make_engine

    engine = make_engine(Settings.from_env(database_url=database_url).database_url, for_writing=False)
    try:
        yield engine
    finally:
        engine.dispose()


@click.group()
def events() -> None:
    """Inspect the stored events, export them, re-apply failed ones."""


@events.command("export")
@filter_options
def export(
    since: int | None,
    until: int | None,
    types: tuple[str, ...],
    statuses: tuple[str, ...],
    database_url: str | None,
) -> None:
    """Write the stored events to stdout as JSONL, oldest first: each line is the body as received.

    A body stored with line breaks (only from a pretty-printed file, never from Stripe) is written
    with its CR/LF characters removed, which leaves the same JSON; their number is told on stderr.
    """
    out = sys.stdout.buffer
    where = EventFilter(since, until, types, statuses)
    count = joined = 0
    with read_engine(database_url) as engine:
        for payload in iter_payloads(engine, where):
            line, changed = single_line(payload)
            joined += changed
            count += 1
            out.write(line.encode("utf-8") + b"\n")
    out.flush()
    click.echo(f"exported {count} events", err=True)
    if joined:
        click.echo(
            f"{joined} of them had line breaks (whitespace) in their body, removed to keep one per line",
            err=True,
        )


@events.command("list")
@filter_options
@click.option(
    "--limit", default=50, show_default=True, type=click.IntRange(1), help="At most this many, newest first."
)
def list_command(
    since: int | None,
    until: int | None,
    types: tuple[str, ...],
    statuses: tuple[str, ...],
    database_url: str | None,
    limit: int,
) -> None:
    """List stored events, newest first: id, created, type, outcome, attempts, error. With
    ``--status refused``: the verified deliveries kept as dead letters (not events the mirror could
    store), with why."""
    refused = Outcome.REFUSED.value in statuses
    event_statuses = tuple(status for status in statuses if status != Outcome.REFUSED.value)
    with read_engine(database_url) as engine:
        where = EventFilter(since, until, types, event_statuses)
        rows = list_events(engine, where, limit) if event_statuses or not refused else []
        letters = list_dead_letters(engine, where, limit) if refused else []
        unlisted_letters = 0 if refused else count_dead_letters(engine)
    if letters:
        print_table(
            ["DEAD LETTER", "RECEIVED", "SOURCE", "REASON", "EVENT ID", "TYPE", "BYTES", "MESSAGE"],
            [
                [
                    str(letter.id),
                    str(letter.received_at)[:19],
                    letter.source,
                    letter.reason,
                    letter.event_id or "",
                    letter.event_type or "",
                    str(letter.size),
                    letter.message[:100],
                ]
                for letter in letters
            ],
        )
    if unlisted_letters:
        click.echo(
            f"{unlisted_letters} refused deliveries are kept as dead letters: events list --status refused",
            err=True,
        )
    if not rows:
        if not letters:
            click.echo("no stored event matches", err=True)
        return
    print_table(
        ["ID", "CREATED", "TYPE", "OUTCOME", "ATTEMPTS", "ERROR"],
        [
            [
                row.id,
                format_time(row.created, zulu=True),
                row.type,
                row.outcome,
                str(row.attempts),
                row.error.splitlines()[-1][:100] if row.error else "",
            ]
            for row in rows
        ],
    )


@events.command("show")
@click.argument("event_id")
@click.option("--raw", is_flag=True, help="Only the payload, exactly as received.")
@database_url_option()
def show(event_id: str, raw: bool, database_url: str | None) -> None:
    """Show one stored event: what was recorded about it, then its payload."""
    with read_engine(database_url) as engine:
        row = get_event(engine, event_id)
    if row is None:
        click.echo(f"no stored event {event_id}", err=True)
        sys.exit(1)
    if raw:
        click.echo(row.payload)
        return
    for name in ("id", "type", "object_id", "livemode", "account", "api_version", "outcome", "attempts"):
        click.echo(f"{name + ':':<13}{getattr(row, name)}")
    click.echo(f"{'created:':<13}{row.created} ({format_time(row.created, zulu=True)})")
    click.echo(f"{'received_at:':<13}{row.received_at}")
    click.echo(f"{'processed_at:':<13}{row.processed_at}")
    if row.error:
        click.echo(f"error:\n{row.error}")
    click.echo("payload:")
    try:
        click.echo(json.dumps(json.loads(row.payload), indent=2, ensure_ascii=False))
    except ValueError:
        click.echo(row.payload)


@events.command("retry")
@click.argument("event_ids", nargs=-1)
@click.option("--failed", "all_failed", is_flag=True, help="Every stored event whose outcome is failed.")
@database_url_option()
def retry(event_ids: tuple[str, ...], all_failed: bool, database_url: str | None) -> None:
    """Apply failed events again (after a fix). Events that did not fail are left as they are.
    Exits 1 when an event is still failed or was not found."""
    if bool(event_ids) == all_failed:
        raise click.UsageError("Give event ids, or --failed.")
    from app.db.engine import make_engine
    from app.ingest.store import EventStore

    url = Settings.from_env(database_url=database_url).database_url
    writer = make_engine(url)
    reader = make_engine(url, for_writing=False)
    counts: dict[str, int] = {}
    trouble = 0
    try:
        store = EventStore(writer)
        if all_failed:
            after = ""
            while ids := failed_event_ids(reader, EventFilter(), after=after):
                after = ids[-1]
                trouble += _report(retry_events(store, reader, ids), counts)
        else:
            trouble += _report(retry_events(store, reader, list(event_ids)), counts)
    finally:
        writer.dispose()
        reader.dispose()
    click.echo(", ".join(f"{name} {number}" for name, number in sorted(counts.items())) or "nothing to retry")
    if trouble:
        sys.exit(1)


def _duration(_ctx: click.Context, _param: click.Parameter, value: str) -> int:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@events.command("prune")
@click.option(
    "--older-than",
    "older_than",
    required=True,
    metavar="DURATION",
    callback=_duration,
    help="Delete what was received longer ago than this (90d, 12h, ...).",
)
@click.option("--dry-run", is_flag=True, help="Only count what would be deleted and kept.")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@database_url_option()
def prune_command(older_than: int, dry_run: bool, as_json: bool, database_url: str | None) -> None:
    """Delete stored events (and dead letters) received longer ago than --older-than, in short
    batches that never hold up the receivers. Failed events, the newest event of every object and
    every event a mirrored row still names as its version are kept, so a replay of what is left
    rebuilds the mirror's current rows (README: Retention)."""
    from datetime import UTC, datetime, timedelta

    from app.db.engine import make_engine
    from app.recording.prune import prune

    url = Settings.from_env(database_url=database_url).database_url
    cutoff = datetime.now(UTC) - timedelta(seconds=older_than)
    engine = make_engine(url)
    try:
        report = prune(
            engine,
            cutoff,
            dry_run=dry_run,
            on_batch=lambda so_far: logger.info(
                "prune: %d events deleted so far", so_far.deleted, extra={"deleted": so_far.deleted}
            ),
        )
    finally:
        engine.dispose()
    logger.info(
        "prune: %d events %s; kept %d failed, %d newest of their object, %d mirrored, %d recent;"
        " %d dead letters %s",
        report.deleted,
        "to delete" if dry_run else "deleted",
        report.kept_failed,
        report.kept_newest,
        report.kept_mirrored,
        report.kept_recent,
        report.dead_letters_deleted,
        "to delete" if dry_run else "deleted",
        extra=report.as_dict(),
    )
    if as_json:
        click.echo(json.dumps({**report.as_dict(), "received_before": cutoff.isoformat()}))
        return
    verb = "would delete" if dry_run else "deleted"
    kept_old = report.kept_failed + report.kept_newest + report.kept_mirrored
    click.echo(f"received before {cutoff.isoformat(timespec='seconds')}:")
    click.echo(f"  {verb} {report.deleted} events and {report.dead_letters_deleted} dead letters")
    click.echo(
        f"  kept {kept_old} events: {report.kept_failed} failed, {report.kept_newest} the newest of their"
        f" object, {report.kept_mirrored} still the version of a mirrored row"
    )
    click.echo(f"kept {report.kept_recent} events and {report.dead_letters_kept} dead letters received since")


def _report(results: list[Any], counts: dict[str, int]) -> int:
    trouble = 0
    for result in results:
        if result.duplicate:
            name = "not failed, left as is"
            click.echo(f"{result.event_id}: {name} ({result.outcome})")
        else:
            name = result.outcome
            detail = f": {result.error.splitlines()[-1]}" if result.error else ""
            click.echo(f"{result.event_id}: {name}{detail}")
            trouble += name in ("failed", "not found", "unreadable", "unavailable")
        counts[name] = counts.get(name, 0) + 1
    return trouble
