"""``billing-mirror payments|items list|get``: the read API's queries for people at a terminal.

Options are generated from each resource's filter schema (``payment[type]`` becomes ``--payment-type``,
``created[gte]`` becomes ``--created-gte``) and go through the same parameter checks as the HTTP API.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import click
from sqlalchemy import Connection
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from app.cli.options import database_url_option, unix_seconds
from app.cli.tables import print_table
from app.db.engine import is_sqlite, make_engine, normalize_url
from app.read.errors import InvalidRequest
from app.read.pagination import Page
from app.read.params import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    RANGE_OPERATORS,
    Boolean,
    Choice,
    Object,
    ParamSpec,
    Timestamp,
    display_name,
    parse_list_request,
)
from app.read.resource import Resource
from app.read.resources import (
    billing_alerts,
    billing_meters,
    invoice_items,
    invoice_payments,
    invoice_rendering_templates,
    invoices,
)
from app.settings import default_database_url
from app.timestamps import format_time

StripeObject = dict[str, Any]
Column = tuple[str, Callable[[StripeObject], str]]
# Currencies whose amounts Stripe gives in whole units, not hundredths.
ZERO_DECIMAL = frozenset(
    {
        "bif",
        "clp",
        "djf",
        "gnf",
        "jpy",
        "kmf",
        "krw",
        "mga",
        "pyg",
        "rwf",
        "ugx",
        "vnd",
        "vuv",
        "xaf",
        "xof",
        "xpf",
    }
)
DESCRIPTION_WIDTH = 40


# ---- formatting -------------------------------------------------------------------------------


def when(value: Any) -> str:
    if not isinstance(value, int) or isinstance(value, bool):
        return ""
    return format_time(value)


def money(amount: Any, currency: Any) -> str:
    if not isinstance(amount, int) or isinstance(amount, bool):
        return ""
    code = currency.lower() if isinstance(currency, str) else ""
    number = str(amount) if code in ZERO_DECIMAL else f"{amount / 100:.2f}"
    return f"{number} {code}".strip()


def ref(value: Any) -> str:
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) else ""


def _payment_ref(obj: StripeObject) -> str:
    payment = obj.get("payment") or {}
    kind = payment.get("type")
    return f"{kind}:{ref(payment.get(kind))}" if isinstance(kind, str) else ""


def _shorten(value: Any, width: int) -> str:
    text = value if isinstance(value, str) else ""
    return text if len(text) <= width else text[: width - 1] + "…"


PAYMENT_COLUMNS: tuple[Column, ...] = (
    ("ID", lambda o: ref(o.get("id"))),
    ("STATUS", lambda o: str(o.get("status") or "")),
    ("REQUESTED", lambda o: money(o.get("amount_requested"), o.get("currency"))),
    ("PAID", lambda o: money(o.get("amount_paid"), o.get("currency"))),
    ("INVOICE", lambda o: ref(o.get("invoice"))),
    ("PAYMENT", _payment_ref),
    ("CREATED (UTC)", lambda o: when(o.get("created"))),
    ("PAID AT (UTC)", lambda o: when((o.get("status_transitions") or {}).get("paid_at"))),
)
ITEM_COLUMNS: tuple[Column, ...] = (
    ("ID", lambda o: ref(o.get("id"))),
    ("CUSTOMER", lambda o: ref(o.get("customer"))),
    ("AMOUNT", lambda o: money(o.get("amount"), o.get("currency"))),
    ("INVOICE", lambda o: ref(o.get("invoice")) or "(pending)"),
    ("DATE (UTC)", lambda o: when(o.get("date"))),
    ("DESCRIPTION", lambda o: _shorten(o.get("description"), DESCRIPTION_WIDTH)),
)

INVOICE_COLUMNS: tuple[Column, ...] = (
    ("ID", lambda o: ref(o.get("id"))),
    ("NUMBER", lambda o: str(o.get("number") or "")),
    ("STATUS", lambda o: str(o.get("status") or "")),
    ("CUSTOMER", lambda o: ref(o.get("customer"))),
    ("TOTAL", lambda o: money(o.get("total"), o.get("currency"))),
    ("PAID", lambda o: money(o.get("amount_paid"), o.get("currency"))),
    ("CREATED (UTC)", lambda o: when(o.get("created"))),
)
METER_COLUMNS: tuple[Column, ...] = (
    ("ID", lambda o: ref(o.get("id"))),
    ("STATUS", lambda o: str(o.get("status") or "")),
    ("EVENT NAME", lambda o: str(o.get("event_name") or "")),
    ("AGGREGATION", lambda o: str((o.get("default_aggregation") or {}).get("formula") or "")),
    ("DISPLAY NAME", lambda o: _shorten(o.get("display_name"), DESCRIPTION_WIDTH)),
    ("CREATED (UTC)", lambda o: when(o.get("created"))),
)
ALERT_COLUMNS: tuple[Column, ...] = (
    ("ID", lambda o: ref(o.get("id"))),
    ("TYPE", lambda o: str(o.get("alert_type") or "")),
    ("STATUS", lambda o: str(o.get("status") or "")),
    ("METER", lambda o: ref((o.get("usage_threshold") or {}).get("meter"))),
    ("THRESHOLD", lambda o: str((o.get("usage_threshold") or {}).get("gte") or "")),
    ("TITLE", lambda o: _shorten(o.get("title"), DESCRIPTION_WIDTH)),
)
TEMPLATE_COLUMNS: tuple[Column, ...] = (
    ("ID", lambda o: ref(o.get("id"))),
    ("STATUS", lambda o: str(o.get("status") or "")),
    ("VERSION", lambda o: str(o.get("version") or "")),
    ("NICKNAME", lambda o: _shorten(o.get("nickname"), DESCRIPTION_WIDTH)),
    ("CREATED (UTC)", lambda o: when(o.get("created"))),
)


def print_objects(columns: Sequence[Column], objects: Sequence[StripeObject]) -> None:
    print_table([header for header, _ in columns], [[cell(obj) for _, cell in columns] for obj in objects])


def print_record(columns: Sequence[Column], obj: StripeObject) -> None:
    """One object: a line per column, its name then its value."""
    print_table(["FIELD", "VALUE"], [[header, cell(obj)] for header, cell in columns], show_header=False)


# ---- options from the filter schema ----------------------------------------------------------


@dataclass(frozen=True)
class FilterOption:
    path: tuple[str, ...]  # where the value goes in the Stripe-style parameters, e.g. ("payment", "type")
    option: click.Option


def _option_name(path: Sequence[str]) -> str:
    parent, *rest = path
    if not rest:
        return parent
    child = rest[0]
    # payment[payment_intent] reads better as --payment-intent than as --payment-payment-intent.
    return child if child.startswith(parent + "_") else f"{parent}_{child}"


def _dest(path: Sequence[str]) -> str:
    return "filter__" + "__".join(path)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def filter_options(schema: Mapping[str, ParamSpec], parent: tuple[str, ...] = ()) -> list[FilterOption]:
    options: list[FilterOption] = []
    for key, spec in schema.items():
        path = (*parent, key)
        if isinstance(spec, Object):
            options += filter_options(spec.fields, path)
            continue
        name = _option_name(path)
        if isinstance(spec, Timestamp):
            options.append(
                FilterOption(
                    path,
                    click.Option(
                        [_flag(name), _dest(path)],
                        callback=_to_unix,
                        help=f"{name} equal to this time (unix seconds or ISO 8601, UTC).",
                    ),
                )
            )
            for op in RANGE_OPERATORS:
                sub = (*path, op)
                options.append(
                    FilterOption(
                        sub,
                        click.Option(
                            [_flag(f"{name}_{op}"), _dest(sub)],
                            callback=_to_unix,
                            help=f"{name} {op} this time (unix seconds or ISO 8601, UTC).",
                        ),
                    )
                )
        elif isinstance(spec, Boolean):
            options.append(
                FilterOption(
                    path,
                    click.Option(
                        [f"{_flag(name)}/--no-{name.replace('_', '-')}", _dest(path)],
                        default=None,
                        help=f"Only with {name}=true (or false with --no-{name.replace('_', '-')}).",
                    ),
                )
            )
        elif isinstance(spec, Choice):
            options.append(
                FilterOption(
                    path,
                    click.Option(
                        [_flag(name), _dest(path)],
                        type=click.Choice(spec.values),
                        help=f"Filter on {display_name(path)}.",
                    ),
                )
            )
        else:
            options.append(
                FilterOption(
                    path, click.Option([_flag(name), _dest(path)], help=f"Filter on {display_name(path)}.")
                )
            )
    return options


def _to_unix(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """As text: the filters go through the read API's own parameter parsing."""
    seconds = unix_seconds(ctx, param, value)
    return None if seconds is None else str(seconds)


def stripe_params(options: Sequence[FilterOption], values: Mapping[str, Any]) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    for item in options:
        value = values.get(_dest(item.path))
        if value is None:
            continue
        node = raw
        for segment in item.path[:-1]:
            node = node.setdefault(segment, {})
        node[item.path[-1]] = "true" if value is True else "false" if value is False else str(value)
    return raw


# ---- commands ---------------------------------------------------------------------------------


@contextmanager
def reading(database_url: str | None) -> Iterator[Connection]:
    url = normalize_url(database_url or default_database_url())
    if is_sqlite(url):
        path = make_url(url).database
        if path and path != ":memory:" and not Path(path).exists():
            raise click.ClickException(
                f"No mirror database at {path}. Set DATABASE_URL (or --database-url), "
                "or run 'billing-mirror migrate' and 'billing-mirror serve' first."
            )
    engine = make_engine(url, for_writing=False)
    try:
        with engine.connect() as connection:
            yield connection
    except SQLAlchemyError as exc:
        raise click.ClickException(f"Database error: {type(exc).__name__}: {exc.args[0]}") from None
    finally:
        engine.dispose()


def _usage(problem: InvalidRequest) -> click.UsageError:
    where = f" ({problem.param})" if problem.param else ""
    return click.UsageError(f"{problem.message}{where}")


def _collect_pages(
    connection: Connection, resource: Resource, raw: dict[str, Any], follow: bool, account: str | None
) -> Page:
    payloads: list[str] = []
    while True:
        page = resource.list_page(
            connection, replace(parse_list_request(raw, resource.filters), account=account)
        )
        payloads += page.payloads
        if not (follow and page.has_more and page.payloads):
            return Page(payloads, page.has_more)
        raw = {**raw, "starting_after": json.loads(page.payloads[-1])["id"]}


def build_group(name: str, resource: Resource, columns: Sequence[Column], help_text: str) -> click.Group:
    group = click.Group(name, help=help_text)
    json_option = click.option("--json", "as_json", is_flag=True, help="Print Stripe's JSON instead.")
    account_option = click.option(
        "--stripe-account", help="A Connect account's objects (acct_...), as the API's Stripe-Account header."
    )
    options = filter_options(resource.filters)

    @click.command("list", help=f"List {name}, newest first, with the filters of GET {resource.url}.")
    @click.option("--limit", type=click.IntRange(1, MAX_LIMIT), default=DEFAULT_LIMIT, show_default=True)
    @click.option("--starting-after", help="Cursor: the page after this id (older objects).")
    @click.option("--ending-before", help="Cursor: the page before this id (newer objects).")
    @click.option("--all", "follow", is_flag=True, help="Follow the pages to the end.")
    @json_option
    @account_option
    @database_url_option()
    def list_command(
        limit: int,
        starting_after: str | None,
        ending_before: str | None,
        follow: bool,
        as_json: bool,
        stripe_account: str | None,
        database_url: str | None,
        **filters: Any,
    ) -> None:
        if follow and ending_before:
            raise click.UsageError("--all pages forwards; it cannot be combined with --ending-before")
        raw = stripe_params(options, filters)
        raw["limit"] = str(limit)
        for key, value in (("starting_after", starting_after), ("ending_before", ending_before)):
            if value is not None:
                raw[key] = value
        with reading(database_url) as connection:
            try:
                page = _collect_pages(connection, resource, raw, follow, stripe_account)
            except InvalidRequest as problem:
                raise _usage(problem) from None
        if as_json:
            click.echo(json.dumps(json.loads(page.list_json(resource.url)), indent=2, ensure_ascii=False))
            return
        objects = [json.loads(payload) for payload in page.payloads]
        if not objects:
            click.echo(f"No {name} match.")
            return
        print_objects(columns, objects)
        if page.has_more:
            click.echo(f"… more: add --starting-after {objects[-1]['id']} (or --all)", err=True)

    list_command.params.extend(item.option for item in options)

    @click.command("get", help=f"Show one object, like GET {resource.url}/ID.")
    @click.argument("object_id")
    @json_option
    @account_option
    @database_url_option()
    def get_command(
        object_id: str, as_json: bool, stripe_account: str | None, database_url: str | None
    ) -> None:
        with reading(database_url) as connection:
            found = resource.retrieve(connection, object_id, stripe_account)
        if found is None:
            raise click.ClickException(f"No such {resource.object_name}: '{object_id}'")
        obj = json.loads(found)
        if as_json:
            click.echo(json.dumps(obj, indent=2, ensure_ascii=False))
        elif obj.get("deleted") is True:
            click.echo(f"{object_id}  (deleted)")
        else:
            print_record(columns, obj)

    group.add_command(list_command)
    group.add_command(get_command)
    return group


def query_groups() -> list[click.Group]:
    return [
        build_group(
            "payments", invoice_payments.RESOURCE, PAYMENT_COLUMNS, "Read the mirror's invoice payments."
        ),
        build_group("items", invoice_items.RESOURCE, ITEM_COLUMNS, "Read the mirror's invoice items."),
        build_group("invoices", invoices.RESOURCE, INVOICE_COLUMNS, "Read the mirror's invoices."),
        build_group("meters", billing_meters.RESOURCE, METER_COLUMNS, "Read the mirror's billing meters."),
        build_group("alerts", billing_alerts.RESOURCE, ALERT_COLUMNS, "Read the mirror's billing alerts."),
        build_group(
            "templates",
            invoice_rendering_templates.RESOURCE,
            TEMPLATE_COLUMNS,
            "Read the mirror's invoice rendering templates.",
        ),
    ]


def register(cli: click.Group) -> None:
    for group in query_groups():
        cli.add_command(group)
