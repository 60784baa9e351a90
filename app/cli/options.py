"""Options that several commands share, defined once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from app.timestamps import parse_time

F = TypeVar("F", bound=Callable[..., Any])


def database_url_option(purpose: str = "") -> Callable[[F], F]:
    """``--database-url`` (or DATABASE_URL); ``purpose`` starts the help, e.g. "For --direct."."""
    help_text = f"{purpose} Defaults to billing-mirror.db here.".strip()
    return click.option("--database-url", envvar="DATABASE_URL", help=help_text)


def unix_seconds(_ctx: click.Context, _param: click.Parameter, value: str | None) -> int | None:
    """Callback of a time option: unix seconds or ISO 8601 (UTC unless it has an offset)."""
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
