"""Billing meters, billing alerts (and their trigger log) and thin meter error reports, on both databases."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from sqlalchemy import Engine
from starlette.testclient import TestClient

from app.mirror.outcome import Outcome
from app.testing.dump import rows
from tests.support import METER, T0, deliver, ingest_each, make_event, one, recorded, snapshot_of

ALERT = "alrt_61SyG10B7WZ01zgkW3Rt5uVw"


def test_meter_columns(engine: Engine) -> None:
    event = recorded("billing.meter.deactivated")
    assert ingest_each(engine, event) == [Outcome.APPLIED]
    row = one(engine, "billing_meters")
    obj = event["data"]["object"]
    assert (row["id"], row["status"], row["deactivated_at"]) == (METER, "inactive", T0 + 86400)
    assert (row["display_name"], row["event_name"], row["aggregation_formula"]) == (
        "API requests (v2)",
        "api_requests",
        "sum",
    )
    assert row["customer_mapping"] == {"event_payload_key": "stripe_customer_id", "type": "by_id"}
    assert row["value_settings"] == {"event_payload_key": "value"}
    assert row["status_transitions"] == {"deactivated_at": T0 + 86400}
    assert (row["created"], row["updated"], row["livemode"]) == (T0, T0 + 86400, False)
    assert json.loads(row["payload"]) == obj


def test_meter_lifecycle_in_any_order_ends_reactivated(engine: Engine) -> None:
    names = [
        "billing.meter.reactivated",
        "billing.meter.deactivated",
        "billing.meter.updated",
        "billing.meter.created",
    ]
    outcomes = ingest_each(engine, *(recorded(name) for name in names))
    assert outcomes == [Outcome.APPLIED, Outcome.STALE, Outcome.STALE, Outcome.STALE]
    row = one(engine, "billing_meters")
    assert (row["status"], row["deactivated_at"], row["display_name"]) == (
        "active",
        None,
        "API requests (v2)",
    )


@pytest.mark.parametrize("reversed_delivery", [False, True])
def test_meter_same_second_is_ordered_by_its_own_updated_time(
    engine: Engine, reversed_delivery: bool
) -> None:
    deactivated = snapshot_of("billing.meter.deactivated")
    reactivated = snapshot_of("billing.meter.reactivated")
    deactivated["updated"], reactivated["updated"] = T0 + 10, T0 + 11
    events = [
        make_event("billing.meter.reactivated", reactivated, created=T0 + 11, event_id="evt_a"),
        make_event("billing.meter.deactivated", deactivated, created=T0 + 11, event_id="evt_z"),
    ]
    ingest_each(engine, *(events[::-1] if reversed_delivery else events))
    assert one(engine, "billing_meters")["status"] == "active"


def test_alert_triggered_writes_the_alert_and_one_trigger(engine: Engine) -> None:
    event = recorded("billing.alert.triggered")
    assert ingest_each(engine, event) == [Outcome.APPLIED]
    alert = one(engine, "billing_alerts")
    obj = event["data"]["object"]
    assert (alert["id"], alert["alert_type"], alert["status"], alert["title"]) == (
        ALERT,
        "usage_threshold",
        "active",
        "API requests above 100k",
    )
    assert (alert["meter"], alert["gte"], alert["recurrence"], alert["customer"]) == (
        METER,
        100000,
        "one_time",
        "cus_TkQ7cW3mJ9xN2a",
    )
    assert json.loads(alert["payload"]) == obj["alert"]
    trigger = one(engine, "billing_alert_triggers")
    assert (trigger["event_id"], trigger["alert"], trigger["customer"]) == (
        event["id"],
        ALERT,
        "cus_TkQ7cW3mJ9xN2a",
    )
    assert (trigger["value"], trigger["created"], trigger["livemode"]) == (100250, T0 + 43200, False)
    assert json.loads(trigger["payload"]) == obj


def test_alert_meter_may_be_an_id(engine: Engine) -> None:
    obj = snapshot_of("billing.alert.triggered")
    obj["alert"]["usage_threshold"]["meter"] = METER
    obj["alert"]["usage_threshold"]["filters"] = None
    ingest_each(engine, make_event("billing.alert.triggered", obj))
    alert = one(engine, "billing_alerts")
    assert (alert["meter"], alert["customer"], alert["filters"]) == (METER, None, None)


def test_trigger_log_is_append_only_and_keyed_by_event(client: TestClient, engine: Engine) -> None:
    event = recorded("billing.alert.triggered")
    assert deliver(client, event).json()["duplicate"] is False
    assert deliver(client, event).json()["duplicate"] is True
    assert len(rows(engine, "billing_alert_triggers")) == 1
    again = copy.deepcopy(event)
    again["id"] = "evt_1SyG12B7WZ01zgkWalrttr02"
    again["created"] += 3600
    again["data"]["object"].update(created=T0 + 46800, value=100900)
    again["data"]["object"]["alert"]["status"] = "inactive"
    assert deliver(client, again).json()["outcome"] == "applied"
    assert [row["value"] for row in rows(engine, "billing_alert_triggers")] == [100250, 100900]
    assert one(engine, "billing_alerts")["status"] == "inactive"
    # An older trigger delivered late is still logged, but does not roll the alert back.
    late = copy.deepcopy(event)
    late["id"] = "evt_1SyG10B7WZ01zgkWalrttr00"
    late["created"] -= 3600
    late["data"]["object"]["alert"]["status"] = "active"
    deliver(client, late)
    assert len(rows(engine, "billing_alert_triggers")) == 3
    assert one(engine, "billing_alerts")["status"] == "inactive"


def test_thin_error_report_is_verified_and_recorded(client: TestClient, engine: Engine) -> None:
    event = recorded("v1.billing.meter.error_report_triggered")
    response = deliver(client, event)
    assert response.status_code == 200 and response.json()["outcome"] == "applied"
    row = one(engine, "billing_meter_error_reports")
    assert (row["event_id"], row["type"], row["meter"]) == (event["id"], event["type"], METER)
    assert (row["created"], row["livemode"], row["context"], row["reason"]) == (T0 + 50402, False, None, None)
    assert row["error_count"] is None and json.loads(row["payload"]) == event
    stored = one(engine, "stripe_events")
    assert (stored["thin"], stored["object_id"]) == (True, METER)
    assert deliver(client, event).json()["duplicate"] is True
    assert len(rows(engine, "billing_meter_error_reports")) == 1


def test_thin_no_meter_found_has_no_meter(client: TestClient, engine: Engine) -> None:
    event = recorded("v1.billing.meter.no_meter_found")
    assert deliver(client, event).json()["outcome"] == "applied"
    row = one(engine, "billing_meter_error_reports")
    assert (row["type"], row["meter"]) == ("v1.billing.meter.no_meter_found", None)
    assert row["reason"] == event["reason"]


def full_event(**data: Any) -> dict[str, Any]:
    """The same notification with the `data` block of GET /v2/core/events/{id}."""
    body = recorded("v1.billing.meter.error_report_triggered")
    body["data"] = {
        "developer_message_summary": "2 meter events were rejected",
        "validation_start": "2026-01-01T13:00:00.000Z",
        "validation_end": "2026-01-01T14:00:00.000Z",
        "reason": {
            "error_count": 2,
            "error_types": [
                {
                    "code": "meter_event_customer_not_found",
                    "error_count": 2,
                    "sample_errors": [
                        {"error_message": "No such customer: cus_gone", "request": {"identifier": "mev_1"}}
                    ],
                }
            ],
        },
        **data,
    }
    return body


def test_thin_event_data_block_is_kept_when_present(client: TestClient, engine: Engine) -> None:
    assert deliver(client, full_event()).json()["outcome"] == "applied"
    row = one(engine, "billing_meter_error_reports")
    assert row["developer_message_summary"] == "2 meter events were rejected"
    assert (row["validation_start"], row["validation_end"]) == (
        "2026-01-01T13:00:00.000Z",
        "2026-01-01T14:00:00.000Z",
    )
    assert row["error_count"] == 2 and row["error_types"][0]["code"] == "meter_event_customer_not_found"


def test_other_thin_events_are_stored_and_ignored(client: TestClient, engine: Engine) -> None:
    ping = recorded("v1.billing.meter.no_meter_found") | {
        "id": "evt_test_ping",
        "type": "v2.core.event_destination.ping",
    }
    assert deliver(client, ping).json()["outcome"] == "ignored"
    assert rows(engine, "billing_meter_error_reports") == []
