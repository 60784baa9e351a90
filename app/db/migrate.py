"""Run the Alembic migrations shipped in the package (``migrations/`` of the project, ``app.migrations``
once installed), so a wheel migrates from any directory."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from alembic import command
from alembic.config import Config

from app.db.engine import normalize_url


def migrations_directory() -> Path:
    return Path(str(files("app.migrations")))


def alembic_config(database_url: str) -> Config:
    directory = migrations_directory()
    config = Config(str(directory / "alembic.ini"))
    config.set_main_option("script_location", str(directory))
    config.attributes["database_url"] = normalize_url(database_url)
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)
