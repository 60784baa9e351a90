"""The pytest plugin as a user's test suite sees it: run in a separate pytest session with pytester."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

SCENARIO = Path(__file__).parent.parent / "fixtures" / "scenarios" / "invoice_lifecycle.jsonl"


def run(pytester: pytest.Pytester, source: str) -> pytest.RunResult:
    pytester.makepyfile(test_user=source)
    return pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")


def test_the_plugin_is_registered_by_its_entry_point(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--fixtures", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(
        ["*mirror -- *app/testing/pytest_plugin.py*", "*signed_delivery -- *", "*replay -- *"]
    )


def test_a_users_test_of_a_delivery_and_a_replay(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        f"""
SCENARIO = {str(SCENARIO)!r}

def test_one_delivery(mirror, signed_delivery):
    event = {{"id": "evt_u1", "object": "event", "type": "invoiceitem.created", "created": 1767312000,
             "livemode": False,
             "data": {{"object": {{"id": "ii_u1", "object": "invoiceitem", "amount": 700}}}}}}
    delivery = signed_delivery(event)
    response = mirror.client.post("/webhooks/stripe", content=delivery.body, headers=delivery.headers)
    assert response.json()["outcome"] == "applied"
    assert mirror.query("SELECT amount FROM invoice_items WHERE id = :id", id="ii_u1") == [{{"amount": 700}}]
    assert mirror.event("evt_u1")["payload"] == delivery.body.decode()
    assert mirror.deliver(event).json()["duplicate"] is True

def test_replay_over_http_and_direct(mirror, replay):
    summary = replay(SCENARIO)
    assert (summary.sent, summary.applied, summary.duplicates, summary.ignored) == (11, 9, 1, 1)
    first = mirror.rows("invoice_payments")
    assert first[0]["status"] == "paid"
    dumped = mirror.dump()
    assert dumped["invoice_payments"] == first and len(dumped["stripe_events"]) == 10
    assert "received_at" not in dumped["stripe_events"][0] and "payload" in dumped["stripe_events"][0]
    again = replay(SCENARIO, direct=True)
    assert again.duplicates == 11
    assert mirror.rows("invoice_payments") == first
    assert mirror.dump() == dumped

def test_a_wrong_secret_is_refused(mirror, signed_delivery):
    delivery = signed_delivery({{"id": "evt_x", "object": "event"}}, secret="whsec_other")
    response = mirror.client.post("/webhooks/stripe", content=delivery.body, headers=delivery.headers)
    assert response.status_code == 400
""",
    )
    result.assert_outcomes(passed=3)


def test_signing_and_verifying_agree_under_freezegun(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
import time
from freezegun import freeze_time

EVENT = {"id": "evt_frozen", "object": "event", "type": "invoiceitem.created", "created": 1893456000,
         "livemode": False, "data": {"object": {"id": "ii_frozen", "object": "invoiceitem"}}}

@freeze_time("2030-01-01 00:00:00")
def test_frozen_clock_signs_and_verifies(mirror, signed_delivery):
    assert int(time.time()) == 1893456000
    delivery = signed_delivery(EVENT)
    assert delivery.headers["Stripe-Signature"].startswith("t=1893456000,")
    response = mirror.client.post("/webhooks/stripe", content=delivery.body, headers=delivery.headers)
    assert response.status_code == 200, response.text

@freeze_time("2030-01-01 00:00:00")
def test_a_signature_made_an_hour_earlier_is_too_old(mirror, signed_delivery):
    delivery = signed_delivery(EVENT, timestamp=1893456000 - 3600)
    response = mirror.client.post("/webhooks/stripe", content=delivery.body, headers=delivery.headers)
    assert response.json()["error"]["code"] == "timestamp_too_old"

def test_replay_under_a_ticking_frozen_clock(mirror, replay):
    with freeze_time("2031-06-01", tick=True):
        summary = replay([EVENT])
    assert summary.applied == 1 and summary.rejected == 0
""",
    )
    result.assert_outcomes(passed=3)
