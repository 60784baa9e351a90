"""What the inspector tests look at: a small history (an item created, changed, replayed stale; an
invoice with lines; a meter), and a database rule that refuses one item's row, so that its event fails
for a real reason, on either database, until the rule is dropped."""

from __future__ import annotations

import copy
from typing import Any

from sqlalchemy import Engine, text

from tests.support import T0, item, make_event, recorded

ITEM = "ii_inspect_A"
REFUSED_ITEM = "ii_inspect_refused"
RULE = "inspector_test_refuse"
RULE_MESSAGE = "refused by a rule of this database"
INVOICE_EVENT = "invoice.created"


def item_history() -> list[dict[str, Any]]:
    """ITEM created at T0, its amount changed, then the creation delivered again under another id and
    older (stale), in that order."""
    created = make_event(
        "invoiceitem.created", item(ITEM, T0, amount=1000), event_id="evt_inspect_item_1", created=T0 + 1
    )
    changed_item = item(ITEM, T0, amount=2500, description="Setup fee, corrected")
    changed = make_event("invoiceitem.updated", changed_item, event_id="evt_inspect_item_2", created=T0 + 60)
    stale = make_event(
        "invoiceitem.updated", item(ITEM, T0, amount=1), event_id="evt_inspect_item_0", created=T0 + 30
    )
    return [created, changed, stale]


def invoice_event() -> dict[str, Any]:
    return copy.deepcopy(recorded(INVOICE_EVENT))


def refused_item_event() -> dict[str, Any]:
    obj = item(REFUSED_ITEM, T0 + 100, amount=700, description="Refused until the rule goes")
    return make_event("invoiceitem.created", obj, event_id="evt_inspect_refused", created=T0 + 101)


def add_rule(engine: Engine) -> None:
    """A trigger that refuses REFUSED_ITEM's row (SQLite: RAISE(ABORT); PostgreSQL: check_violation):
    the database refuses the event's write, so the event is stored as failed with the database's words."""
    with engine.begin() as connection:
        if engine.dialect.name == "sqlite":
            connection.execute(
                text(
                    f"CREATE TRIGGER {RULE} BEFORE INSERT ON invoice_items WHEN NEW.id = '{REFUSED_ITEM}'"
                    f" BEGIN SELECT RAISE(ABORT, '{RULE_MESSAGE}'); END"
                )
            )
            return
        connection.execute(
            text(
                f"CREATE FUNCTION {RULE}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                f" IF NEW.id = '{REFUSED_ITEM}' THEN"
                f" RAISE EXCEPTION '{RULE_MESSAGE}' USING ERRCODE = 'check_violation'; END IF;"
                " RETURN NEW; END $$"
            )
        )
        connection.execute(
            text(
                f"CREATE TRIGGER {RULE} BEFORE INSERT ON invoice_items FOR EACH ROW EXECUTE FUNCTION {RULE}()"
            )
        )


def drop_rule(engine: Engine) -> None:
    with engine.begin() as connection:
        if engine.dialect.name == "sqlite":
            connection.execute(text(f"DROP TRIGGER IF EXISTS {RULE}"))
            return
        connection.execute(text(f"DROP TRIGGER IF EXISTS {RULE} ON invoice_items"))
        connection.execute(text(f"DROP FUNCTION IF EXISTS {RULE}()"))
