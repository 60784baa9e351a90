"""Thin v1.billing.meter.error_report_triggered and v1.billing.meter.no_meter_found notifications.

A thin event carries no snapshot: the row records the notification itself (one per event id) and,
when the body includes it (as the full event from GET /v2/core/events/{id} does), its `data` block.
"""

from __future__ import annotations

from typing import Any

from app.db.models import BillingMeterErrorReport
from app.json_text import json_text
from app.mirror.handlers.base import Source, StripeObject, dig
from app.mirror.upsert import guarded_upsert
from app.mirror.writes import Writes

METER_ERROR_EVENT_TYPES = (
    "v1.billing.meter.error_report_triggered",
    "v1.billing.meter.no_meter_found",
)


def error_report_columns(body: StripeObject, source: Source) -> dict[str, Any]:
    related = body.get("related_object")
    is_meter = isinstance(related, dict) and related.get("type") == "billing.meter"
    meter = related["id"] if is_meter and isinstance(related, dict) else None
    data: dict[str, Any] = body["data"] if isinstance(body.get("data"), dict) else {}
    context = body.get("context")
    return {
        "type": source.type,
        "meter": meter,
        "created": source.created,
        "livemode": body.get("livemode"),
        "context": context if isinstance(context, str) else None,
        "reason": body.get("reason"),
        "developer_message_summary": data.get("developer_message_summary"),
        "validation_start": data.get("validation_start"),
        "validation_end": data.get("validation_end"),
        "error_count": dig(data, "reason", "error_count"),
        "error_types": dig(data, "reason", "error_types"),
        "payload": json_text(body),
    }


def handle_meter_error_report(writes: Writes, body: StripeObject, source: Source) -> None:
    version = source.version(0)
    guarded_upsert(
        writes,
        BillingMeterErrorReport,
        {"event_id": source.event_id},
        error_report_columns(body, source),
        version,
    )
