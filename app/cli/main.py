"""The ``billing-mirror`` command. Subcommands of other areas register themselves in ``main``."""

from __future__ import annotations

import sys

import click

from app.cli.backfill import backfill
from app.cli.options import database_url_option
from app.cli.read import register as register_query_commands
from app.settings import (
    DEFAULT_COMMAND_LOG_LEVEL,
    HOW_TO_SET_API_KEY,
    LOG_LEVELS,
    ConfigurationError,
    Settings,
)

LOG_LEVEL_ENV, LOG_FORMAT_ENV = "BILLING_MIRROR_LOG_LEVEL", "BILLING_MIRROR_LOG_FORMAT"


def log_options(function: click.decorators.FC) -> click.decorators.FC:
    """``--log-level`` and ``--log-format`` (or BILLING_MIRROR_LOG_LEVEL / BILLING_MIRROR_LOG_FORMAT)."""
    function = click.option(
        "--log-format",
        type=click.Choice(("text", "json"), case_sensitive=False),
        help=f"Log lines as text (default) or JSON objects; or {LOG_FORMAT_ENV}.",
    )(function)
    return click.option(
        "--log-level",
        type=click.Choice(LOG_LEVELS, case_sensitive=False),
        help=f"Log level (serve: info, one line per delivery; other commands: warning); or {LOG_LEVEL_ENV}.",
    )(function)


@click.group()
@log_options
@click.pass_context
def cli(ctx: click.Context, log_level: str | None, log_format: str | None) -> None:
    """billing-mirror: a verified Stripe Billing webhook receiver and SQL mirror."""
    import os

    ctx.obj = {"log_level": log_level, "log_format": log_format}
    if ctx.invoked_subcommand == "serve":
        return  # serve sets up its own logs, in every server process
    if log_level or log_format or os.environ.get(LOG_LEVEL_ENV) or os.environ.get(LOG_FORMAT_ENV):
        from app.webhook.logs import configure_logging

        settings = Settings.from_env(log_level=log_level, log_format=log_format)
        configure_logging(settings.log_level or DEFAULT_COMMAND_LOG_LEVEL, settings.log_format)


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
@log_options
@click.option(
    "--metrics-port",
    type=click.IntRange(min=1, max=65535),
    help="Also serve GET /metrics without a key on this port of 127.0.0.1; or BILLING_MIRROR_METRICS_PORT.",
)
@click.pass_context
def serve(
    ctx: click.Context,
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
    log_level: str | None,
    log_format: str | None,
    metrics_port: int | None,
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
            log_level=log_level or (ctx.obj or {}).get("log_level"),
            log_format=log_format or (ctx.obj or {}).get("log_format"),
            metrics_port=metrics_port,
            server_processes=workers,
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
    os.environ["BILLING_MIRROR_SERVER_PROCESSES"] = str(settings.server_processes)
    if settings.metrics_port:
        os.environ["BILLING_MIRROR_METRICS_PORT"] = str(settings.metrics_port)
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
