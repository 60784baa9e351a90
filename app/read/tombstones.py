"""Retrieve for resources with a tombstone: Stripe answers a deleted object as {id, object, deleted}."""

from __future__ import annotations

from sqlalchemy import Connection, Table, select

from app.json_text import json_text


def deleted_object(object_name: str, object_id: str) -> str:
    return json_text({"id": object_id, "object": object_name, "deleted": True})


def retrieve_or_tombstone(
    connection: Connection, table: Table, object_name: str, object_id: str, account: str | None = None
) -> str | None:
    """The stored payload, Stripe's deleted object for a tombstone, or None when never seen (by the
    account the request is made for)."""
    owned = table.c.account.is_(None) if account is None else table.c.account == account
    row = connection.execute(
        select(table.c.payload, table.c.deleted).where(table.c.id == object_id, owned)
    ).first()
    if row is None:
        return None
    if row.deleted:
        return deleted_object(object_name, object_id)
    return row.payload  # type: ignore[no-any-return]
