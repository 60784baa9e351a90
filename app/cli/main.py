"""The ``billing-mirror`` command. Subcommands of other areas register themselves in ``main``."""

from __future__ import annotations

import sys

import click

from app.cli.backfill import backfill
from app.cli.options import database_url_option
from app.cli.read import register as register_query_commands
from app.settings import HOW_TO_SET_API_KEY, ConfigurationError, Settings


@click.group()
def cli() -> None:
    """billing-mirror: a verified Stripe Billing webhook receiver and SQL mirror."""


@cli.command()
@database_url_option()
def migrate(database_url: str | None) -> None:
    """Bring the database schema up to date."""
    from app.db.migrate import upgrade

    settings = Settings.from_env(database_url=database_url)
    upgrade(settings.database_url)
    click.echo(f"migrated {settings.database_url.split('@')[-1]} to head")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int, help="Server processes.")
@database_url_option()
@click.option(
    "--secret", "secrets", multiple=True, help="Signing secret (repeatable); or STRIPE_WEBHOOK_SECRET."
)
@click.option("--tolerance", type=int, help="Allowed signature age in seconds (default 300).")
@click.option("--max-body-bytes", type=int, help="Largest accepted body (default 1 MiB).")
@click.option("--no-migrate", is_flag=True, help="Do not run migrations before serving.")
@click.option(
    "--catch-up-every",
    help="With STRIPE_API_KEY: catch up from Stripe's Events API this often (e.g. 5m); or"
    " BILLING_MIRROR_CATCH_UP_EVERY. One receiver at a time.",
)
@click.option(
    "--refresh-every",
    help="With STRIPE_API_KEY: read again what the mirror knows is out of date this often (default 60s).",
)
@click.option(
    "--header-timeout",
    help="Close a connection whose request head is not complete this long after it opened or after"
    " the previous response (default 10s); or BILLING_MIRROR_HEADER_TIMEOUT.",
)
@click.option(
    "--body-timeout",
    help="Answer 408 to a request whose body is not complete this long after its head (default 30s);"
    " or BILLING_MIRROR_BODY_TIMEOUT.",
)
@click.option(
    "--keep-alive",
    help="Close a kept-alive connection silent this long after a response (default 5s); or"
    " BILLING_MIRROR_KEEP_ALIVE.",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    help="Connections each server process holds at most (default 1000); or BILLING_MIRROR_MAX_CONNECTIONS.",
)
def serve(
    host: str,
    port: int,
    workers: int,
    database_url: str | None,
    secrets: tuple[str, ...],
    tolerance: int | None,
    max_body_bytes: int | None,
    no_migrate: bool,
    catch_up_every: str | None,
    refresh_every: str | None,
    header_timeout: str | None,
    body_timeout: str | None,
    keep_alive: str | None,
    max_connections: int | None,
) -> None:
    """Run the webhook receiver (and read API) with uvicorn."""
    import os

    from app.server import run_server

    try:
        settings = Settings.from_env(
            database_url=database_url,
            webhook_secrets=tuple(secrets) or None,
            tolerance_seconds=tolerance,
            max_body_bytes=max_body_bytes,
            catch_up_seconds=catch_up_every,
            refresh_seconds=refresh_every,
            header_timeout_seconds=header_timeout,
            body_timeout_seconds=body_timeout,
            keep_alive_seconds=keep_alive,
            max_connections=max_connections,
        )
        settings.require_secrets()
        if settings.catch_up_seconds and not settings.stripe_api_key:
            raise ConfigurationError(f"--catch-up-every reads Stripe's Events API. {HOW_TO_SET_API_KEY}")
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from None
    if not no_migrate:
        from app.db.migrate import upgrade

        upgrade(settings.database_url)
    # Worker processes build their own app from the environment, so hand the settings over there.
    os.environ["DATABASE_URL"] = settings.database_url
    os.environ["STRIPE_WEBHOOK_SECRET"] = ",".join(settings.webhook_secrets)
    os.environ["STRIPE_WEBHOOK_TOLERANCE"] = str(settings.tolerance_seconds)
    os.environ["MAX_BODY_BYTES"] = str(settings.max_body_bytes)
    if settings.catch_up_seconds:
        os.environ["BILLING_MIRROR_CATCH_UP_EVERY"] = str(settings.catch_up_seconds)
    os.environ["BILLING_MIRROR_REFRESH_EVERY"] = str(settings.refresh_seconds)
    os.environ["BILLING_MIRROR_HEADER_TIMEOUT"] = str(settings.header_timeout_seconds)
    os.environ["BILLING_MIRROR_BODY_TIMEOUT"] = str(settings.body_timeout_seconds)
    os.environ["BILLING_MIRROR_KEEP_ALIVE"] = str(settings.keep_alive_seconds)
    os.environ["BILLING_MIRROR_MAX_CONNECTIONS"] = str(settings.max_connections)
    click.echo(f"billing-mirror listening on http://{host}:{port}/webhooks/stripe", err=True)
    run_server(settings, host=host, port=port, workers=workers)


from app.cli.events import events  # noqa: E402
from app.cli.replay import replay  # noqa: E402
from app.cli.sync import reconcile, sync  # noqa: E402

cli.add_command(replay)
cli.add_command(events)
register_query_commands(cli)  # payments / items: list and get
cli.add_command(backfill)
cli.add_command(sync)
cli.add_command(reconcile)


def main() -> None:
    try:
        cli()
    except ConfigurationError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
