"""Cursor pagination shared by every list: newest first by the object's creation timestamp, then by id,
so objects created in the same second keep a stable order and cursors never skip or repeat one."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Connection, or_, select
from sqlalchemy.sql.elements import KeyedColumnElement

from app.read.errors import resource_missing
from app.read.params import PageRequest, TimeRange


@dataclass(frozen=True)
class Page:
    """Objects as stored JSON text, in list order, and whether more follow in the paging direction."""

    payloads: list[str]
    has_more: bool

    def list_json(self, url: str) -> str:
        """Stripe's list envelope around the stored objects, which are inserted byte for byte."""
        head = f'{{"object":"list","url":{json.dumps(url)},"has_more":{"true" if self.has_more else "false"}'
        return f'{head},"data":[{",".join(self.payloads)}]}}'


# The object as served, from its stored payload and the values of a listing's ``extra`` columns.
Render = Callable[[str, Sequence[Any]], str]


@dataclass(frozen=True)
class Listing:
    """Where one resource's objects live and what orders them; ``render`` turns a stored payload
    into what is served, from ``extra`` columns read with it (fields the mirror derives)."""

    object_name: str  # as in Stripe's "No such invoice_payment: 'x'"
    id: KeyedColumnElement[str]
    timestamp: KeyedColumnElement[int]  # the object's creation time (``created``, or ``date`` for items)
    payload: KeyedColumnElement[str]
    extra: tuple[ColumnElement[Any], ...] = ()
    render: Render | None = None


def time_conditions(column: KeyedColumnElement[int], span: TimeRange) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if span.gt is not None:
        conditions.append(column > span.gt)
    if span.gte is not None:
        conditions.append(column >= span.gte)
    if span.lt is not None:
        conditions.append(column < span.lt)
    if span.lte is not None:
        conditions.append(column <= span.lte)
    return conditions


def of_account(table: Any, account: str | None) -> ColumnElement[bool]:
    """Rows of ``account`` (the Stripe-Account a request names), or of the platform without one:
    what Stripe shows a request made for that account."""
    condition: ColumnElement[bool] = (
        table.c.account.is_(None) if account is None else table.c.account == account
    )
    return condition


def _cursor_position(
    connection: Connection, listing: Listing, object_id: str, param: str, account: str | None
) -> int:
    """The timestamp of the cursor object; the cursor need not match the filters, only exist (for the
    account the request is made for)."""
    owned = of_account(listing.id.table, account)
    found = connection.execute(select(listing.timestamp).where(listing.id == object_id, owned)).first()
    if found is None or found[0] is None:
        raise resource_missing(listing.object_name, object_id, param=param, status=400)
    return int(found[0])


def fetch_page(
    connection: Connection,
    listing: Listing,
    conditions: Sequence[ColumnElement[bool]],
    page: PageRequest,
    account: str | None = None,
) -> Page:
    ts, key = listing.timestamp, listing.id
    where: list[ColumnElement[bool]] = [ts.is_not(None), of_account(key.table, account), *conditions]
    backwards = page.ending_before is not None and page.starting_after is None
    if page.starting_after is not None:
        at = _cursor_position(connection, listing, page.starting_after, "starting_after", account)
        # (ts, id) < (at, cursor), written so that "ts <= at" is a plain index range on both databases.
        where += [ts <= at, or_(ts < at, key < page.starting_after)]
    elif page.ending_before is not None:
        at = _cursor_position(connection, listing, page.ending_before, "ending_before", account)
        where += [ts >= at, or_(ts > at, key > page.ending_before)]
    order = (ts.asc(), key.asc()) if backwards else (ts.desc(), key.desc())
    # One row more than asked tells whether another page follows.
    query = select(listing.payload, *listing.extra).where(*where).order_by(*order).limit(page.limit + 1)
    rows = list(connection.execute(query))
    has_more = len(rows) > page.limit
    rows = rows[: page.limit]
    if backwards:
        rows.reverse()  # a page is always newest first, whichever way we walked
    render = listing.render
    payloads = [row[0] if render is None else render(row[0], tuple(row[1:])) for row in rows]
    return Page(payloads=payloads, has_more=has_more)


def stored_payload(connection: Connection, table: Any, object_id: str, account: str | None) -> str | None:
    """One object's stored payload, for the account a request is made for; None when unknown there."""
    query = select(table.c.payload).where(table.c.id == object_id, of_account(table, account))
    found: str | None = connection.execute(query).scalar_one_or_none()
    return found
