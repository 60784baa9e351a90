"""A ``billing-mirror sync`` process killed with SIGKILL mid-run resumes from its checkpoints: it never
reads a finished window again, and the mirror ends complete (SQLite and PostgreSQL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import Engine, text

from tests.stripe_server import objects
from tests.stripe_server.faults import Delay
from tests.stripe_server.runner import RunningServer
from tests.stripe_server.store import INVOICE_ITEMS
from tests.support import PROJECT_ROOT, T0, payloads, sync_args

pytestmark = pytest.mark.slow


def pages_applied(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text("SELECT COALESCE(SUM(pages), 0) FROM sync_windows")).scalar() or 0)


def test_a_killed_sync_resumes_without_reading_finished_windows(
    stripe_api: RunningServer, db_url: str, engine: Engine
) -> None:
    store = stripe_api.server.store
    store.shuffle_ties(5)
    items = [store.put(INVOICE_ITEMS, objects.invoice_item(date=T0 + n // 3)) for n in range(3000)]
    stripe_api.server.clock.set(T0 + 86_400)
    stripe_api.server.faults.add(Delay(0.1), path="/v1/invoiceitems")  # slow pages: time to kill it
    command = [sys.executable, "-m", "app.cli.main", "sync", *sync_args(stripe_api.url, db_url, "items")]
    command += ["--threads", "3"]

    process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while pages_applied(engine) < 8:
            assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
            assert time.monotonic() < deadline, "the sync did not get going"
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)  # no shutdown, no flush, nothing after this point
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    with engine.connect() as connection:
        spans = connection.execute(text("SELECT span, done FROM sync_windows")).all()
    finished = {span for span, done in spans if done}
    assert finished and len(finished) < len(spans), spans
    killed_at = len(stripe_api.server.log.entries)
    stripe_api.server.faults.clear()

    resumed = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)

    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert payloads(engine, "invoice_items") == {item["id"]: item for item in items}
    for entry in stripe_api.server.log.entries[killed_at:]:
        created = (entry.params or {}).get("created", {})
        span = f"{created.get('gte', '')}..{created.get('lt', '')}"
        assert span not in finished, f"finished window {span} was read again"
    with engine.connect() as connection:
        assert connection.execute(text("SELECT COUNT(*) FROM sync_windows WHERE NOT done")).scalar() == 0
