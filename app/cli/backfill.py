"""``billing-mirror backfill ...``: load Stripe list JSON the user fetched into the mirror."""

from __future__ import annotations

from pathlib import Path

import click
from sqlalchemy import Engine

from app.cli.options import database_url_option
from app.settings import Settings

FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.group()
def backfill() -> None:
    """Fill the mirror from Stripe list JSON (for objects that have no events)."""


def _engine(database_url: str | None) -> Engine:
    from app.db.engine import make_engine

    return make_engine(Settings.from_env(database_url=database_url).database_url)


@backfill.command("templates")
@click.argument("file", type=FILE)
@database_url_option()
def templates_command(file: Path, database_url: str | None) -> None:
    """Load invoice rendering templates from FILE (GET /v1/invoice_rendering_templates output): one
    event in the log, applied in one transaction."""
    from app.recording.backfill import BackfillError, backfill_templates, read_list

    engine = _engine(database_url)
    try:
        page = read_list(file)
        loaded = backfill_templates(engine, page.data)
    except BackfillError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        engine.dispose()
    click.echo(f"{len(page.data)} templates read as event {loaded.event_id}: {loaded.outcome}")


@backfill.command("lines")
@click.argument("invoice_id")
@click.argument("file", type=FILE)
@database_url_option()
def lines_command(invoice_id: str, file: Path, database_url: str | None) -> None:
    """Write the lines of INVOICE_ID from FILE (GET /v1/invoices/INVOICE_ID/lines output, one page
    or a JSON array of consecutive pages): one event in the log, applied in one transaction."""
    from app.recording.backfill import BackfillError, backfill_lines, read_list

    engine = _engine(database_url)
    try:
        page = read_list(file)
        result = backfill_lines(engine, invoice_id, page)
    except BackfillError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        engine.dispose()
    state = "complete" if result.complete else "still incomplete (the list has more pages)"
    click.echo(f"{result.lines} lines written for {invoice_id} as event {result.event_id}; lines {state}")
