"""Test databases: a fresh SQLite file or a fresh PostgreSQL database per test run.

PostgreSQL is found at BILLING_MIRROR_TEST_PG (default: the local server, user postgres). Without it
the PostgreSQL cases skip with the reason, except under CI=true, where they fail.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from app.db.engine import normalize_url

PG_ADMIN_URL = os.environ.get(
    "BILLING_MIRROR_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
BACKENDS = ("sqlite", "postgresql")


def postgres_problem() -> str | None:
    """None when PostgreSQL answers, else why not."""
    try:
        engine = create_engine(normalize_url(PG_ADMIN_URL), connect_args={"connect_timeout": 3})
        with engine.connect() as connection:
            connection.execute(text("select 1"))
        engine.dispose()
        return None
    except Exception as exc:
        return f"PostgreSQL not reachable at {make_url(PG_ADMIN_URL).render_as_string()}: {exc}"


def require_postgres(problem: str | None) -> None:
    if problem is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true requires PostgreSQL. {problem}")
    pytest.skip(problem)


@contextmanager
def temporary_pg_database(prefix: str = "bm_test", admin_url: str = PG_ADMIN_URL) -> Iterator[str]:
    """CREATE a uniquely named database, yield its URL, DROP it afterwards (tests and benchmarks)."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(normalize_url(admin_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(normalize_url(admin_url)).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def copy_sqlite(template: Path, target: Path) -> str:
    shutil.copyfile(template, target)
    return f"sqlite:///{target}"
