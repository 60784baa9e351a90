"""GET /metrics: what it counts, what it reads from the database, who may scrape it, and exact counts
across the worker processes of ``serve --workers 2`` (real HTTP)."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from freezegun import freeze_time
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, text
from starlette.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from app.webhook.metrics import _newest_applied_sql
from tests.support import (
    API_KEY,
    LiveServer,
    blast,
    deliver,
    encode,
    free_port,
    item,
    make_event,
    signed_headers,
)


def samples(body: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, by name and sorted labels."""
    found = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def total(body: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(
        value
        for (sample, found), value in samples(body).items()
        if sample == name and set(labels.items()) <= set(found)
    )


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
def metrics_client(make_settings: Callable[..., Settings]) -> TestClient:
    with TestClient(create_app(make_settings(api_keys=(API_KEY,)))) as client:
        yield client  # type: ignore[misc]


def scrape(client: TestClient) -> str:
    response = client.get("/metrics", headers={"Authorization": f"Bearer {API_KEY}"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return response.text


def test_deliveries_failures_commits_and_api_requests_are_counted(metrics_client: TestClient) -> None:
    first = make_event("invoiceitem.created", item("ii_m1", 100), event_id="evt_m1")
    for event in (
        first,
        first,  # a duplicate
        make_event("invoiceitem.created", item("ii_m2", 100), event_id="evt_m2"),
        make_event("invoiceitem.created", {**item("ii_m3", 100), "date": "abc"}, event_id="evt_m3"),
        make_event("plan.created", {"id": "plan_m", "object": "plan"}, event_id="evt_m4"),
    ):
        assert deliver(metrics_client, event).status_code == 200
    body = encode(first)
    bad = {"Stripe-Signature": "t=1,v1=" + "0" * 64}
    assert metrics_client.post("/webhooks/stripe", content=body, headers=bad).status_code == 400
    refused = b"not json"
    answer = metrics_client.post("/webhooks/stripe", content=refused, headers=signed_headers(refused, 0))
    assert answer.status_code == 400  # signed at 0: too old
    auth = {"Authorization": f"Bearer {API_KEY}"}
    assert metrics_client.get("/v1/invoiceitems", headers=auth).status_code == 200
    assert metrics_client.get("/v1/invoiceitems/ii_m1", headers=auth).status_code == 200
    assert metrics_client.get("/v1/invoiceitems/ii_none", headers=auth).status_code == 404
    assert metrics_client.get("/v1/invoiceitems").status_code == 401
    assert metrics_client.get("/v1/nothing/here", headers=auth).status_code == 404

    body_text = scrape(metrics_client)
    deliveries = "billing_mirror_deliveries_total"
    assert total(body_text, deliveries, type="invoiceitem.created", outcome="applied") == 3  # m1 twice, m2
    assert total(body_text, deliveries, type="invoiceitem.created", outcome="failed") == 1
    assert total(body_text, deliveries, type="plan.created", outcome="ignored") == 1
    assert total(body_text, "billing_mirror_duplicate_deliveries_total") == 1
    failures = "billing_mirror_verification_failures_total"
    assert total(body_text, failures, reason="no_matching_signature") == 1
    assert total(body_text, failures, reason="timestamp_too_old") == 1
    assert total(body_text, "billing_mirror_commit_seconds_count") == 5
    assert total(body_text, "billing_mirror_batch_events_sum") == 5
    assert total(body_text, "billing_mirror_committed_events_total") == 5
    commits = total(body_text, "billing_mirror_commits_total")
    assert 1 <= commits <= 5
    assert total(body_text, "billing_mirror_events_per_commit") == pytest.approx(5 / commits)
    requests = "billing_mirror_api_requests_total"
    assert total(body_text, requests, route="/v1/invoiceitems", status="200") == 1
    assert total(body_text, requests, route="/v1/invoiceitems", status="401") == 1
    assert total(body_text, requests, route="/v1/invoiceitems/{object_id}", status="200") == 1
    assert total(body_text, requests, route="/v1/invoiceitems/{object_id}", status="404") == 1
    assert total(body_text, requests, route="other", status="404") == 1
    assert total(body_text, "billing_mirror_failed_events") == 1
    assert total(body_text, "billing_mirror_database_up") == 1


def test_lag_and_the_oldest_failed_event_are_read_at_scrape_time(
    make_settings: Callable[..., Settings],
) -> None:
    with TestClient(create_app(make_settings(api_keys=(API_KEY,)))) as client:
        with freeze_time("2026-01-01 00:00:00"):
            empty = scrape(client)
            assert total(empty, "billing_mirror_failed_events") == 0
            assert total(empty, "billing_mirror_oldest_failed_event_age_seconds") == 0
            assert ("billing_mirror_lag_seconds", ()) not in samples(empty)  # nothing applied yet
            created = 1767225600 - 30  # 30 s before the frozen now
            newest = make_event("invoiceitem.created", item("ii_l1", 100), created=created)
            older = make_event("invoiceitem.created", item("ii_l2", 100), created=created - 500)
            broken = make_event(
                "invoiceitem.created", {**item("ii_l3", 100), "date": "abc"}, created=created + 20
            )
            for event in (older, newest, broken):
                assert deliver(client, event).status_code == 200
        with freeze_time("2026-01-01 00:10:00"):
            later = scrape(client)
    # The failed event is newer but not applied: the lag counts from the newest applied one.
    assert total(later, "billing_mirror_lag_seconds") == 600 + 30
    assert total(later, "billing_mirror_failed_events") == 1
    assert total(later, "billing_mirror_oldest_failed_event_age_seconds") == pytest.approx(600, abs=1)


def test_only_a_read_api_key_opens_metrics(
    metrics_client: TestClient, make_settings: Callable[..., Settings]
) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        basic("prometheus", "wrong"),
        {"Authorization": "Digest x"},
    ):
        response = metrics_client.get("/metrics", headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Basic")
        assert API_KEY not in response.text
    for headers in (
        {"Authorization": f"Bearer {API_KEY}"},
        basic("prometheus", API_KEY),  # as Prometheus sends basic_auth: any user name, the key as password
        basic("", API_KEY),
        basic(API_KEY, ""),  # as the read API takes it
    ):
        assert metrics_client.get("/metrics", headers=headers).status_code == 200
    with TestClient(create_app(make_settings())) as closed:  # no key configured: closed
        answer = closed.get("/metrics", headers={"Authorization": f"Bearer {API_KEY}"})
        assert answer.status_code == 401 and "BILLING_MIRROR_API_KEYS" in answer.text


def test_the_lag_query_walks_the_created_index(engine: Engine) -> None:
    """Cheap at any size: the newest applied event is found from the end of an index, not by reading
    every applied event (SQLite would pick the outcome index without the hint)."""
    dialect = engine.dialect.name
    explain = "EXPLAIN QUERY PLAN " if dialect == "sqlite" else "EXPLAIN "
    with engine.connect() as connection:
        plan = " ".join(str(row) for row in connection.execute(text(explain + _newest_applied_sql(dialect))))
        failed = " ".join(
            str(row)
            for row in connection.execute(
                text(
                    explain + "SELECT count(*), min(received_at) FROM stripe_events WHERE outcome = 'failed'"
                )
            )
        )
    if dialect == "sqlite":
        assert "ix_stripe_events_created" in plan and "SCAN stripe_events USING INDEX" in plan
        assert "ix_stripe_events_outcome" in failed
    else:  # an empty table may be planned as a sequential scan: the statement is what must be valid
        assert plan and failed


def test_metrics_port_serves_without_a_key_on_loopback(make_settings: Callable[..., Settings]) -> None:
    port = free_port()
    with TestClient(create_app(make_settings(metrics_port=port))) as client:
        assert deliver(client, make_event("invoiceitem.created", item("ii_p", 100))).status_code == 200
        answer = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert answer.status_code == 200
        assert total(answer.text, "billing_mirror_deliveries_total") == 1
        assert total(answer.text, "billing_mirror_database_up") == 1
    with pytest.raises(httpx.ConnectError):  # closed with the application
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)


@pytest.mark.slow
def test_counts_are_exact_across_worker_processes(
    live_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    directory = tmp_path / "metrics"
    directory.mkdir()
    (directory / "counter_1.db").write_bytes(b"left over by an earlier run")
    metrics_port = free_port()
    server = live_server(
        workers=2,
        BILLING_MIRROR_API_KEYS=API_KEY,
        BILLING_MIRROR_METRICS_PORT=str(metrics_port),
        PROMETHEUS_MULTIPROC_DIR=str(directory),
    )
    # Each process writes a file of counts from its start (its counters without labels): wait for both,
    # so that both are there to take connections.
    deadline = time.monotonic() + 30
    while len(list(directory.glob("counter_*.db"))) < 2:
        assert time.monotonic() < deadline, sorted(path.name for path in directory.iterdir())
        time.sleep(0.1)
    count = 120
    bodies = [
        encode(make_event("invoiceitem.created", item(f"ii_w{number}", 100), event_id=f"evt_w{number}"))
        for number in range(count)
    ]
    statuses = asyncio.run(blast(server.url, bodies, concurrency=24))
    assert statuses == [200] * count
    # Every scrape, whichever process answers it, sums the files of both: exactly the deliveries sent.
    pids = {path.stem.rsplit("_", 1)[-1] for path in directory.glob("counter_*.db")}
    assert len(pids) == 2 and "1" not in pids, sorted(path.name for path in directory.iterdir())
    for _ in range(6):
        answer = httpx.get(f"{server.url}/metrics", auth=("prometheus", API_KEY), timeout=10)
        assert answer.status_code == 200
        assert total(answer.text, "billing_mirror_deliveries_total", outcome="applied") == count
        assert total(answer.text, "billing_mirror_commit_seconds_count") == count
        assert total(answer.text, "billing_mirror_committed_events_total") == count
    unkeyed = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10)
    assert unkeyed.status_code == 200
    assert total(unkeyed.text, "billing_mirror_deliveries_total") == count
    assert total(unkeyed.text, "billing_mirror_database_up") == 1
    assert httpx.get(f"{server.url}/metrics", timeout=10).status_code == 401
