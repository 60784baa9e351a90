"""Options that several commands share, defined once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def database_url_option(purpose: str = "") -> Callable[[F], F]:
    """``--database-url`` (or DATABASE_URL); ``purpose`` starts the help, e.g. "For --direct."."""
    help_text = f"{purpose} Defaults to billing-mirror.db here.".strip()
    return click.option("--database-url", envvar="DATABASE_URL", help=help_text)
