"""Shared fixtures: every database test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlmodel import SQLModel
from starlette.testclient import TestClient

import app.db.models  # noqa: F401
from app.db.engine import make_engine
from app.db.migrate import upgrade
from app.main import create_app
from app.settings import Settings
from tests.support import (
    API_KEY,
    BACKENDS,
    BEARER,
    OTHER_API_KEY,
    SECRET,
    LiveServer,
    copy_sqlite,
    postgres_problem,
    require_postgres,
    temporary_pg_database,
)


@pytest.fixture(autouse=True)
def _retries_never_sleep() -> Iterator[None]:
    """stamina's retries (app.recording.replay) never sleep in tests: one attempt, unless a test sets more."""
    import stamina

    with stamina.set_testing(True):
        yield


@pytest.fixture(scope="session")
def pg_problem() -> str | None:
    return postgres_problem()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def sqlite_file(tmp_path: Path, sqlite_template: Path) -> Path:
    """A migrated, empty SQLite file (for the writer process, which only SQLite has)."""
    path = tmp_path / "mirror.db"
    copy_sqlite(sqlite_template, path)
    return path


@pytest.fixture
def file_engine(sqlite_file: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{sqlite_file}")
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def pg_session_database(pg_problem: str | None) -> Iterator[str]:
    """One migrated PostgreSQL database for the whole run, emptied between tests."""
    require_postgres(pg_problem)
    with temporary_pg_database() as url:
        upgrade(url)
        yield url


def _truncate_all(url: str) -> None:
    engine = make_engine(url)
    names = ", ".join(f'"{table.name}"' for table in SQLModel.metadata.sorted_tables)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {names}"))
    engine.dispose()


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> Iterator[str]:
    """A migrated, empty database: SQLite file or PostgreSQL."""
    if request.param == "sqlite":
        yield copy_sqlite(sqlite_template, tmp_path / "mirror.db")
        return
    url = request.getfixturevalue("pg_session_database")
    _truncate_all(url)
    yield url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def make_settings(db_url: str) -> Callable[..., Settings]:
    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {"database_url": db_url, "webhook_secrets": (SECRET,)}
        values.update(overrides)
        return Settings(**values)

    return build


@pytest.fixture
def client(make_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    """The real application, in process, on the parametrized database."""
    with TestClient(create_app(make_settings())) as test_client:
        yield test_client


@pytest.fixture
def live_server(db_url: str) -> Iterator[Callable[..., LiveServer]]:
    started: list[LiveServer] = []

    def start(workers: int = 1, **extra_env: str) -> LiveServer:
        server = LiveServer(db_url, workers=workers, extra_env=extra_env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def api(make_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    """The real application with the read API opened by two keys; requests carry the first."""
    with TestClient(
        create_app(make_settings(api_keys=(API_KEY, OTHER_API_KEY))), headers=BEARER
    ) as test_client:
        yield test_client


@pytest.fixture
def stripe_api() -> Any:
    """The Stripe-compatible test server (tests/stripe_server) over HTTP on 127.0.0.1, emptied for each test;
    ``stripe_api.client()`` is a StripeClient pinned to it, ``stripe_api.server`` its data, faults and log."""
    from tests.stripe_server.runner import shared_server  # stripe and uvicorn load only for these tests

    running = shared_server()
    running.server.reset()
    return running
