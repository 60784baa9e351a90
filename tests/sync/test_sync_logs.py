"""The catch-up logs each page and window it reads (as JSON with --log-format json), and serve's
background rounds are counted in the metrics; no line holds the Stripe key."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from app.settings import Settings
from app.sync.background import BackgroundSync
from app.webhook.metrics import Metrics, render
from tests.stripe_server.app import API_KEY as STRIPE_KEY
from tests.stripe_server.app import API_VERSION as STRIPE_VERSION
from tests.stripe_server.runner import RunningServer
from tests.support import T0, run_cli, sync_args
from tests.sync.test_catch_up import DAY, history, receive


@pytest.fixture
def restore_logging() -> Iterator[None]:
    names = ("billing_mirror", "uvicorn", "uvicorn.error", "uvicorn.access")
    saved = {name: (list(logging.getLogger(name).handlers), logging.getLogger(name).level) for name in names}
    propagate = {name: logging.getLogger(name).propagate for name in names}
    yield
    for name, (handlers, level) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate[name]


def test_catch_up_logs_each_page_and_window(
    stripe_api: RunningServer, db_url: str, engine: Engine, restore_logging: None
) -> None:
    events = history(stripe_api, T0, 12)
    receive(engine, *events[:2])
    stripe_api.server.clock.set(T0 + DAY)
    result = run_cli(
        "--log-level", "info", "--log-format", "json", "sync", "events", *sync_args(stripe_api.url, db_url)
    )
    assert result.exit_code == 0, result.output
    assert STRIPE_KEY not in result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    pages = [line for line in lines if line["message"].startswith("catch-up: page of")]
    windows = [line for line in lines if line["message"].startswith("catch-up: window")]
    assert pages and windows
    assert sum(line["events"] for line in pages) == len(events)
    stored = {}
    for line in pages:
        for outcome, count in line["outcomes"].items():
            stored[outcome] = stored.get(outcome, 0) + count
    assert stored == {"applied": len(events) - 2, "duplicate": 2}
    assert windows[-1]["message"].endswith(f"({len(windows)} of {len(windows)} windows)")


def test_background_rounds_are_counted(stripe_api: RunningServer, db_url: str, engine: Engine) -> None:
    events = history(stripe_api, T0, 5)
    receive(engine, events[0])
    stripe_api.server.clock.set(T0 + DAY)
    settings = Settings(
        database_url=db_url,
        stripe_api_key=STRIPE_KEY,
        stripe_api_base=stripe_api.url,
        stripe_api_version=STRIPE_VERSION,
        catch_up_seconds=3600,
    )
    metrics = Metrics()
    background = BackgroundSync(settings, engine, metrics=metrics)
    background._round("catch-up", background._catch_up)
    background._round("refresh", background._refresh)
    text = render(metrics, engine).decode()
    assert 'billing_mirror_sync_rounds_total{kind="catch-up",result="done"} 1.0' in text
    assert 'billing_mirror_sync_rounds_total{kind="refresh",result="done"} 1.0' in text
    assert (
        f'billing_mirror_sync_events_total{{kind="catch-up",outcome="applied"}} {len(events) - 1}.0' in text
    )
    assert "billing_mirror_catch_up_watermark_timestamp_seconds" in text
    broken = BackgroundSync(
        settings.model_copy(update={"stripe_api_base": "http://127.0.0.1:9"}), engine, metrics=metrics
    )
    broken._round("catch-up", broken._catch_up)
    assert (
        'billing_mirror_sync_rounds_total{kind="catch-up",result="failed"} 1.0'
        in render(metrics, engine).decode()
    )
