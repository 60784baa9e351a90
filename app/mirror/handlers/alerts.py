"""billing.alert.triggered: its object is a billing.alert_triggered (no id) embedding the whole alert.

The alert goes to billing_alerts (newest event wins); the trigger is appended to
billing_alert_triggers under the event id, so a redelivered event never appends twice.
"""

from __future__ import annotations

from typing import Any

from app.db.models import BillingAlert, BillingAlertTrigger
from app.json_text import json_text
from app.mirror.handlers.base import Source, StripeObject, dig, ref_id
from app.mirror.upsert import guarded_upsert
from app.mirror.writes import Writes


def alert_filters(alert: StripeObject) -> Any:
    """``usage_threshold.filters`` (since 2024-09-30.acacia), or before it the top-level ``filter``
    ``{customer}`` in the same shape (one filter of type customer)."""
    if "usage_threshold" in alert:
        return dig(alert, "usage_threshold", "filters")
    legacy = alert.get("filter")
    customer = legacy.get("customer") if isinstance(legacy, dict) else None
    return [{"type": "customer", "customer": customer}] if customer else None


def threshold(alert: StripeObject) -> dict[str, Any]:
    """``usage_threshold`` (since 2024-09-30.acacia) or ``usage_threshold_config`` (before)."""
    found = (
        alert.get("usage_threshold") if "usage_threshold" in alert else alert.get("usage_threshold_config")
    )
    return found if isinstance(found, dict) else {}


def filter_customer(alert: StripeObject) -> str | None:
    """The customer of the alert's customer filter, when it has exactly one."""
    filters = alert_filters(alert)
    if not isinstance(filters, list):
        return None
    customers = {ref_id(f.get("customer")) for f in filters if isinstance(f, dict) and f.get("customer")}
    return customers.pop() if len(customers) == 1 else None


def alert_columns(alert: StripeObject) -> dict[str, Any]:
    return {
        "alert_type": alert.get("alert_type"),
        "status": alert.get("status"),
        "title": alert.get("title"),
        "livemode": alert.get("livemode"),
        "meter": ref_id(threshold(alert).get("meter")),
        "gte": threshold(alert).get("gte"),
        "recurrence": threshold(alert).get("recurrence"),
        "customer": filter_customer(alert),
        "filters": alert_filters(alert),
        "payload": json_text(alert),
    }


def upsert_alert(writes: Writes, alert: StripeObject, source: Source) -> None:
    if not isinstance(alert.get("id"), str):
        raise ValueError("billing.alert object has no id")
    guarded_upsert(writes, BillingAlert, {"id": alert["id"]}, alert_columns(alert), source.version(0))


def handle_alert_triggered(writes: Writes, obj: StripeObject, source: Source) -> None:
    alert = obj.get("alert")
    if not isinstance(alert, dict) or not isinstance(alert.get("id"), str):
        raise ValueError("billing.alert_triggered carries no alert with an id")
    upsert_alert(writes, alert, source)
    version = source.version(0)
    trigger = {
        "alert": alert["id"],
        "customer": ref_id(obj.get("customer")),
        "value": obj.get("value"),
        "created": obj.get("created"),
        "livemode": obj.get("livemode"),
        "payload": json_text(obj),
    }
    guarded_upsert(writes, BillingAlertTrigger, {"event_id": source.event_id}, trigger, version)
