"""What every handler shares: its signature and small helpers for Stripe values."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from app.mirror.upsert import Version
from app.mirror.writes import Writes


class Source(NamedTuple):
    """The event a snapshot came from: handlers version their writes with it (a tuple: one is built
    per event planned, and a frozen dataclass costs several times more to build).

    ``fetched`` marks a snapshot read from Stripe's API (a ``snapshot.*`` event), dated by the
    response's Date header: within one second it cannot tell whether it was read before or after an
    event of that second, so it loses such a tie (``version``)."""

    event_id: str
    created: int
    type: str
    fetched: bool = False

    def version(self, precedence: int, tiebreak: int = 0) -> Version:
        """The version of a write from this source: ``tiebreak`` (the resource's own order within one
        second) first, then an event before a fetched snapshot of the same second."""
        return Version(precedence, self.created, tiebreak * 2 + (not self.fetched), self.event_id)


StripeObject = dict[str, Any]
# A handler plans guarded writes for the object; it never touches the database. The event is
# applied when any of them changes a row, stale when none does, ignored when it plans none.
Handler = Callable[[Writes, StripeObject, Source], None]


def ref_id(value: Any) -> str | None:
    """An expandable field is an id string, or the object itself when expanded."""
    if type(value) is str:  # the common case first: called for many fields of every row
        return value
    if isinstance(value, dict):
        inner = value.get("id")
        return inner if isinstance(inner, str) else None
    return value if isinstance(value, str) else None


def dig(obj: Any, *path: str) -> Any:
    for name in path:
        if type(obj) is not dict and not isinstance(obj, dict):
            return None
        obj = obj.get(name)
    return obj


def as_dict(value: Any) -> dict[str, Any]:
    """``value`` if it is an object, else an empty one: a sub-object read once, then its fields with
    plain ``.get`` (``as_dict(as_dict(obj).get("a")).get("b")`` is ``dig(obj, "a", "b")``)."""
    return value if isinstance(value, dict) else {}


def count_set(mapping: Any) -> int:
    """How many timestamps of a status_transitions object are set; used to break same-second ties."""
    if not isinstance(mapping, dict):
        return 0
    return len(mapping) - list(mapping.values()).count(None)


def embedded_price(obj: StripeObject) -> tuple[str | None, str | None, str | None]:
    """(price id, product id, pricing type) of a line or an invoice item in either shape: ``pricing``
    (since 2025-03-31.basil) or, before, the embedded Price object ``price`` (``plan`` when it is null)."""
    if "pricing" in obj:
        pricing = as_dict(obj.get("pricing"))
        details = as_dict(pricing.get("price_details"))
        kind = pricing.get("type")
        return (
            ref_id(details.get("price")),
            ref_id(details.get("product")),
            kind if isinstance(kind, str) else None,
        )
    legacy = obj.get("price") or obj.get("plan")
    if legacy is None:
        return None, None, None
    return ref_id(legacy), ref_id(as_dict(legacy).get("product")), "price_details"


def quantity_text(obj: StripeObject) -> Any:
    """``quantity_decimal`` (since 2026-03-25.dahlia), or the integer ``quantity`` as text before it."""
    if "quantity_decimal" in obj:
        return obj.get("quantity_decimal")
    quantity = obj.get("quantity")
    return str(quantity) if isinstance(quantity, int) and not isinstance(quantity, bool) else None
