"""Group commit on a real server: concurrent deliveries share commits, and a 2xx always means committed."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, text

from app.db.migrate import upgrade
from tests.support import LiveServer, encode, free_port, load_fixture, make_event, signed_headers

pytestmark = pytest.mark.slow


def payment_deliveries(count: int, tag: str) -> list[tuple[str, bytes]]:
    """``count`` distinct invoice_payment.paid deliveries: (event id, body)."""
    template = load_fixture("invoice_payment.paid.json")["data"]["object"]
    deliveries = []
    for number in range(count):
        payment = {**template, "id": f"inpay_{tag}_{number:04d}"}
        event = make_event("invoice_payment.paid", payment, event_id=f"evt_{tag}_{number:04d}")
        deliveries.append((event["id"], encode(event)))
    return deliveries


async def post_all(
    url: str, deliveries: list[tuple[str, bytes]], connections: int
) -> dict[str, httpx.Response | BaseException]:
    """POST every delivery at once over ``connections`` connections; map event id -> answer or error."""
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def post(body: bytes) -> httpx.Response:
            headers = signed_headers(body, int(time.time()))
            return await client.post("/webhooks/stripe", content=body, headers=headers)

        answers = await asyncio.gather(*(post(body) for _, body in deliveries), return_exceptions=True)
    return {event_id: answer for (event_id, _), answer in zip(deliveries, answers, strict=True)}


def stored_event_ids(engine: Engine) -> set[str]:
    with engine.connect() as connection:
        return set(connection.execute(text("SELECT id FROM stripe_events")).scalars())


def test_concurrent_deliveries_share_commits(live_server: Callable[..., LiveServer], engine: Engine) -> None:
    server = live_server()
    deliveries = payment_deliveries(50, "group")

    answers = asyncio.run(post_all(server.url, deliveries, connections=50))

    for event_id, answer in answers.items():
        assert isinstance(answer, httpx.Response), f"{event_id}: {answer!r}"
        assert answer.status_code == 200, answer.text
        assert answer.json()["outcome"] == "applied"
    assert stored_event_ids(engine) == {event_id for event_id, _ in deliveries}
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM invoice_payments")).scalar_one() == 50
    writer = httpx.get(f"{server.url}/healthz").json()["writer"]
    assert writer["events"] == 50
    # Fewer commits than events: requests that arrived during a commit were grouped into the next one.
    assert 1 <= writer["commits"] < 50, writer
    assert writer["largest_batch"] > 1, writer


def unreachable_url(db_url: str, tmp_path: Path) -> str:
    if db_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path / 'not-created-yet' / 'mirror.db'}"
    return f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nowhere"


def test_no_2xx_when_the_database_is_unavailable(
    live_server: Callable[..., LiveServer], db_url: str, tmp_path: Path
) -> None:
    url = unreachable_url(db_url, tmp_path)
    server = live_server(DATABASE_URL=url)
    deliveries = payment_deliveries(3, "down")

    answers = asyncio.run(post_all(server.url, deliveries, connections=3))

    for answer in answers.values():
        assert isinstance(answer, httpx.Response)
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["type"] == "database_unavailable"
        assert answer.headers["retry-after"]
    if url.startswith("sqlite"):
        # The database appears (as after an outage): Stripe's retries of the same deliveries now land.
        Path(url.removeprefix("sqlite:///")).parent.mkdir()
        upgrade(url)
        retried = asyncio.run(post_all(server.url, deliveries, connections=3))
        assert all(isinstance(a, httpx.Response) and a.status_code == 200 for a in retried.values())


def test_every_2xx_survives_a_killed_server(live_server: Callable[..., LiveServer], engine: Engine) -> None:
    """Kill -9 the server in the middle of a burst: each event it answered 200 must be in the database."""
    server = live_server()
    deliveries = payment_deliveries(400, "kill")
    answered: dict[str, int] = {}

    async def burst() -> None:
        limits = httpx.Limits(max_connections=20, max_keepalive_connections=20)
        async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=30) as client:

            async def post(event_id: str, body: bytes) -> None:
                headers = signed_headers(body, int(time.time()))
                response = await client.post("/webhooks/stripe", content=body, headers=headers)
                answered[event_id] = response.status_code
                if len(answered) == 60:
                    server.process.kill()  # SIGKILL: no shutdown, no flush, nothing after this point

            posts = (post(event_id, body) for event_id, body in deliveries)
            await asyncio.gather(*posts, return_exceptions=True)

    asyncio.run(burst())
    server.process.wait()

    acknowledged = {event_id for event_id, status in answered.items() if 200 <= status < 300}
    assert len(acknowledged) >= 60
    assert len(answered) < len(deliveries), "the server must die mid-burst for this test to mean anything"
    missing = acknowledged - stored_event_ids(engine)
    assert not missing, f"answered 2xx but not committed: {sorted(missing)[:5]}"


def test_overlapping_concurrent_deliveries_converge(
    live_server: Callable[..., LiveServer], engine: Engine
) -> None:
    """Invoices that embed the same payments in different orders, all at once: batches of different
    writers (several on PostgreSQL) lock those rows in clashing orders, yet every delivery is answered
    200 and each payment ends with the snapshot of the newest event that carried it."""
    server = live_server()
    payment = load_fixture("invoice_payment.paid.json")["data"]["object"]
    invoice = load_fixture("invoice.paid.json")["data"]["object"]
    payment_ids = [f"inpay_overlap_{n}" for n in range(4)]
    rng = random.Random(7)
    deliveries: list[tuple[str, bytes]] = []
    newest: dict[str, tuple[str, int]] = {}  # payment id -> (event id, amount) of the newest carrier
    for number in range(40):
        carried = rng.sample(payment_ids, rng.randint(2, 4))
        embedded = [{**payment, "id": pid, "amount_paid": 1000 + number} for pid in carried]
        obj = {**invoice, "id": f"in_overlap_{number:02d}", "payments": {"object": "list", "data": embedded}}
        event = make_event(
            "invoice.paid", obj, event_id=f"evt_overlap_{number:02d}", created=1_767_225_600 + number
        )
        deliveries.append((event["id"], encode(event)))
        for pid in carried:
            newest[pid] = (event["id"], 1000 + number)
    rng.shuffle(deliveries)

    answers = asyncio.run(post_all(server.url, deliveries, connections=40))

    for event_id, answer in answers.items():
        assert isinstance(answer, httpx.Response), f"{event_id}: {answer!r}"
        assert answer.status_code == 200, answer.text
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT id, last_event_id, amount_paid FROM invoice_payments")).all()
    assert {row.id: (row.last_event_id, row.amount_paid) for row in rows} == newest
