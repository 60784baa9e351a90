"""invoice_rendering_template objects: Stripe sends no events for them, so they arrive only as
snapshots (``sync``, or a list file loaded by ``backfill templates``)."""

from __future__ import annotations

from typing import Any

from app.db.models import InvoiceRenderingTemplate
from app.json_text import json_text
from app.mirror.handlers.base import Source, StripeObject
from app.mirror.upsert import Version, guarded_upsert
from app.mirror.writes import Writes


def template_columns(obj: StripeObject) -> dict[str, Any]:
    return {
        "nickname": obj.get("nickname"),
        "status": obj.get("status"),
        "version": obj.get("version"),
        "livemode": obj.get("livemode"),
        "metadata": obj.get("metadata"),
        "created": obj.get("created"),
        "payload": json_text(obj),
    }


def upsert_template(writes: Writes, obj: StripeObject, source: Source) -> None:
    """Versioned by the template's own ``version`` first (an older version never replaces a newer
    one), then by when it was fetched: archiving does not bump the version, a later fetch sees it."""
    template_id, version = obj.get("id"), obj.get("version")
    if obj.get("object") != "invoice_rendering_template" or not isinstance(template_id, str):
        raise ValueError(f"Not an invoice_rendering_template: {json_text(obj)[:120]}")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ValueError(f"Template {template_id} has no integer version")
    guarded_upsert(
        writes,
        InvoiceRenderingTemplate,
        {"id": template_id},
        template_columns(obj),
        Version(0, version, source.created, source.event_id),
    )
