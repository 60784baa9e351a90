"""One signed event, however strange, harms nobody but itself: the defects of issue #14, on both databases.

Each poison body once killed the SQLite writer child or failed a whole PostgreSQL batch (its valid
neighbours answered 500 or 503, nothing stored), or was stored on one database and refused by the
other. Now every verified delivery is stored, as an event (applied or failed, with a clear error) or
as a dead letter (refused, byte for byte, with the reason), identically on SQLite and PostgreSQL, and
its neighbours are applied and answered as if it were not there.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine

from app.ingest.apply import IngestResult
from app.ingest.store import event_store_for
from app.mirror.envelope import Event, parse_event
from app.mirror.outcome import Outcome
from app.testing.dump import rows
from tests.support import (
    LiveServer,
    blast,
    encode,
    item,
    item_created,
    make_event,
    stored_event,
)

T = 1_767_225_600
MARK = "__poison__"  # a value replaced in the JSON text by what json.dumps cannot write (1e400)


def valid_item(number: int) -> dict[str, Any]:
    return item_created(item(f"ii_neighbour_{number:03d}", T + number, customer="cus_poison"))


def body_with(event: dict[str, Any], raw_value: str | None = None) -> bytes:
    text = json.dumps(event)  # ensure_ascii: lone surrogates and NUL as \u escapes, as a hostile sender
    return (text.replace(f'"{MARK}"', raw_value) if raw_value is not None else text).encode()


def poison_item(**fields: Any) -> dict[str, Any]:
    obj = item("ii_poison", T, customer="cus_poison")
    obj.update(fields)
    return make_event("invoiceitem.created", obj, event_id="evt_poison_item")


def nested(depth: int) -> bytes:
    """An item whose metadata nests ``depth`` lists deep (written as text: no Python recursion)."""
    event = make_event("invoiceitem.created", item("ii_deep", T, customer="cus_poison") | {"metadata": MARK})
    return body_with(event, "[" * depth + '"deep"' + "]" * depth)


# (name, body, what it must become): "refused" (a dead letter with that reason) or "failed" (a stored
# event with an error naming the column).
POISONS: list[tuple[str, bytes, str, str]] = [
    (
        "created 2**63",
        body_with(make_event("invoiceitem.created", {"id": "ii_x"}, created=2**63)),
        "refused",
        "invalid_event",
    ),
    (
        "surrogate in id",
        body_with(make_event("invoiceitem.created", {"id": "ii_x"}, event_id="evt_\ud800")),
        "refused",
        "invalid_event",
    ),
    (
        "surrogate in type",
        body_with(make_event("invoiceitem.\ud800", {"id": "ii_x"})),
        "refused",
        "invalid_event",
    ),
    (
        "surrogate in object id",
        body_with(make_event("invoiceitem.created", {"id": "ii_\udfff"})),
        "refused",
        "invalid_event",
    ),
    ("NUL in a string", body_with(poison_item(description="a\u0000b")), "refused", "invalid_event"),
    (
        "NUL in the id",
        body_with(make_event("invoiceitem.created", {"id": "ii_x"}, event_id="evt_\u0000")),
        "refused",
        "invalid_event",
    ),
    (
        "id of 3 KB",
        body_with(make_event("invoiceitem.created", {"id": "ii_x"}, event_id="evt_" + "x" * 3000)),
        "refused",
        "invalid_event",
    ),
    (
        "object id of 3 KB",
        body_with(make_event("invoiceitem.created", {"id": "ii_" + "y" * 3000})),
        "refused",
        "invalid_event",
    ),
    ("nested 1,100 deep", nested(1100), "refused", "invalid_json"),
    (
        "UTF-16",
        json.dumps(make_event("invoiceitem.created", {"id": "ii_x"})).encode("utf-16"),
        "refused",
        "invalid_json",
    ),
    (
        "UTF-16 without BOM",
        json.dumps(make_event("invoiceitem.created", {"id": "ii_x"})).encode("utf-16-le"),
        "refused",
        "invalid_json",
    ),
    ("date is text", body_with(poison_item(date="abc")), "failed", "invoice_items.date"),
    ("date is 1e400", body_with(poison_item(date=MARK), "1e400"), "failed", "invoice_items.date"),
    ("amount past 64 bits", body_with(poison_item(amount=2**70)), "failed", "invoice_items.amount"),
    ("quantity is an object", body_with(poison_item(quantity={"a": 1})), "failed", "invoice_items.quantity"),
    (
        "customer id of 3 KB",
        body_with(poison_item(customer="cus_" + "z" * 3000)),
        "failed",
        "invoice_items.customer",
    ),
]
POISON_IDS = [name for name, *_ in POISONS]


def thin_with_object_id() -> bytes:
    thin = {
        "id": "evt_thin_poison",
        "object": "v2.core.event",
        "type": "v1.billing.meter.error_report_triggered",
        "created": "2026-01-01T00:00:00.000Z",
        "livemode": False,
        "related_object": {"id": {"not": "a string"}, "type": "billing.meter", "url": "/v1/billing/meters/x"},
    }
    return json.dumps(thin).encode()


def check_stored_as_expected(engine: Engine, body: bytes, expected: str, detail: str) -> None:
    if expected == "refused":
        letters = [letter for letter in rows(engine, "dead_letters") if bytes(letter["body"]) == body]
        assert len(letters) == 1, "the refused body must be kept byte for byte"
        assert letters[0]["reason"] == detail, letters[0]["message"]
    else:
        stored = stored_event(engine, "evt_poison_item")
        assert stored is not None and stored["outcome"] == "failed"
        assert detail in stored["error"], stored["error"]
        assert rows(engine, "invoice_items", id="ii_poison") == []


def neighbours_applied(engine: Engine, count: int) -> None:
    mirrored = {row["id"] for row in rows(engine, "invoice_items")}
    assert {f"ii_neighbour_{number:03d}" for number in range(count)} <= mirrored


@pytest.mark.parametrize(("name", "body", "expected", "detail"), POISONS, ids=POISON_IDS)
def test_a_poison_delivery_is_stored_and_answered_2xx_alone(
    client: Any, engine: Engine, name: str, body: bytes, expected: str, detail: str
) -> None:
    from tests.webhook.test_endpoint import post

    response = post(client, body)
    assert response.status_code == 200, response.text
    assert response.json()["outcome"] == expected
    check_stored_as_expected(engine, body, expected, detail)
    assert post(client, valid_item(0)).json()["outcome"] == "applied"  # the receiver still works


def test_a_thin_event_whose_object_id_is_an_object_is_stored(client: Any, engine: Engine) -> None:
    from tests.webhook.test_endpoint import post

    response = post(client, thin_with_object_id())
    assert response.status_code == 200, response.text
    stored = stored_event(engine, "evt_thin_poison")
    assert stored is not None and stored["object_id"] is None


def planned_batch(poison: bytes) -> list[Event]:
    """A poison event (parsed as the receiver would, or built as bytes the envelope refuses) between
    valid neighbours, all in one batch."""
    neighbours = [parse_event(encode(valid_item(number))) for number in range(6)]
    return [*neighbours[:3], parse_event(poison), *neighbours[3:]]


@pytest.mark.parametrize(
    ("name", "body", "expected", "detail"),
    [poison for poison in POISONS if poison[2] == "failed"],
    ids=[name for name, _, expected, _ in POISONS if expected == "failed"],
)
def test_a_failing_event_in_a_batch_leaves_its_neighbours_applied(
    db_url: str, engine: Engine, name: str, body: bytes, expected: str, detail: str
) -> None:
    """In one transaction, through the store a receiver or a replay uses (on a SQLite file, the
    writer child that these bodies used to kill)."""
    with event_store_for(engine, db_url) as store:
        results = store.ingest(planned_batch(body))
    outcomes = [result.outcome for result in results if isinstance(result, IngestResult)]
    assert outcomes == [Outcome.APPLIED] * 3 + [Outcome.FAILED] + [Outcome.APPLIED] * 3
    check_stored_as_expected(engine, body, expected, detail)
    neighbours_applied(engine, 6)


def unstorable_events() -> list[Event]:
    """Events whose own stripe_events row no database takes, built past the envelope's checks (as a
    bug in them would let through): the store must keep each as a dead letter, alone."""
    good = json.loads(encode(valid_item(99)))

    def event(event_id: str, created: int) -> Event:
        return Event(
            id=event_id,
            type="invoiceitem.created",
            created=created,
            livemode=False,
            api_version=None,
            account=None,
            thin=False,
            raw=json.dumps(good),
            body=good,
        )

    return [event("evt_\ud800", T), event("evt_huge_created", 2**64)]


def test_an_event_the_database_refuses_becomes_a_dead_letter_alone(db_url: str, engine: Engine) -> None:
    neighbours = [parse_event(encode(valid_item(number))) for number in range(4)]
    batch = [neighbours[0], *unstorable_events(), *neighbours[1:]]
    with event_store_for(engine, db_url) as store:
        results = store.ingest(batch)
    outcomes = [result.outcome if isinstance(result, IngestResult) else result for result in results]
    assert outcomes == [Outcome.APPLIED, Outcome.REFUSED, Outcome.REFUSED, *[Outcome.APPLIED] * 3]
    letters = rows(engine, "dead_letters")
    assert sorted(letter["reason"] for letter in letters) == ["unstorable", "unstorable"]
    assert all("cannot store" in letter["message"] for letter in letters)
    neighbours_applied(engine, 4)


def test_poison_deliveries_among_concurrent_valid_ones_harm_none(
    live_server: Callable[..., LiveServer], engine: Engine
) -> None:
    """Over real HTTP, every poison body sent in the middle of a wave of valid deliveries (so they
    share group commits): every delivery is answered 200, every valid one is applied."""
    server = live_server()
    valid = [encode(valid_item(number)) for number in range(120)]
    poison = [body for _, body, _, _ in POISONS] + [thin_with_object_id()]
    bodies: list[bytes] = []
    for number, body in enumerate(valid):
        bodies.append(body)
        if number % 8 == 0 and poison:
            bodies.append(poison.pop())
    bodies.extend(poison)
    statuses = asyncio.run(blast(server.url, bodies, concurrency=32))
    assert set(statuses) == {200}, sorted(set(statuses))
    neighbours_applied(engine, 120)
    assert len(rows(engine, "dead_letters")) == len([p for p in POISONS if p[2] == "refused"])
