"""billing.meter.created|updated|deactivated|reactivated -> billing_meters."""

from __future__ import annotations

from typing import Any

from app.db.models import BillingMeter
from app.json_text import json_text
from app.mirror.handlers.base import Source, StripeObject, dig
from app.mirror.upsert import Version, guarded_upsert
from app.mirror.writes import Writes

METER_EVENT_TYPES = (
    "billing.meter.created",
    "billing.meter.updated",
    "billing.meter.deactivated",
    "billing.meter.reactivated",
)


def meter_version(obj: StripeObject, source: Source) -> Version:
    # Within one event second the meter's own `updated` time orders deactivate/reactivate pairs.
    updated = obj.get("updated")
    return source.version(0, updated if isinstance(updated, int) else 0)


def meter_columns(obj: StripeObject) -> dict[str, Any]:
    return {
        "status": obj.get("status"),
        "display_name": obj.get("display_name"),
        "event_name": obj.get("event_name"),
        "event_time_window": obj.get("event_time_window"),
        "aggregation_formula": dig(obj, "default_aggregation", "formula"),
        "customer_mapping": obj.get("customer_mapping"),
        "value_settings": obj.get("value_settings"),
        "status_transitions": obj.get("status_transitions"),
        "deactivated_at": dig(obj, "status_transitions", "deactivated_at"),
        "livemode": obj.get("livemode"),
        "created": obj.get("created"),
        "updated": obj.get("updated"),
        "payload": json_text(obj),
    }


def handle_meter_event(writes: Writes, obj: StripeObject, source: Source) -> None:
    meter_id = obj.get("id")
    if not isinstance(meter_id, str):
        raise ValueError("billing.meter object has no id")
    guarded_upsert(writes, BillingMeter, {"id": meter_id}, meter_columns(obj), meter_version(obj, source))
