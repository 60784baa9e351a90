"""The inspector in process (TestClient, on SQLite and PostgreSQL): who may open it, the CSRF guard of
its retry form, escaping of what was delivered, filters and paging, an object's history, the overview,
and a retry that re-applies a failed event through the committer."""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text
from starlette.testclient import TestClient

from app.inspect.auth import CSRF_COOKIE, CSRF_FIELD, new_csrf_token
from app.main import create_app
from app.settings import Settings
from tests.inspect.scenario import (
    ITEM,
    REFUSED_ITEM,
    RULE_MESSAGE,
    add_rule,
    drop_rule,
    invoice_event,
    item_history,
    refused_item_event,
)
from tests.support import API_KEY, OTHER_API_KEY, T0, deliver, item, make_event, stored
from tests.support import BILLING as FIXTURES_BILLING

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def basic(password: str, user: str = "ops") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
def inspector(make_settings: Callable[..., Settings], engine: Engine) -> Iterator[TestClient]:
    """The real app with two read API keys; requests carry the first as a Basic password."""
    with TestClient(
        create_app(make_settings(api_keys=(API_KEY, OTHER_API_KEY))), headers=basic(API_KEY)
    ) as client:
        yield client
    drop_rule(engine)


def delivered(client: TestClient, *events: dict[str, Any]) -> None:
    for event in events:
        response = deliver(client, event)
        assert response.status_code == 200, response.text


def token_of(page: str) -> str:
    found = re.search(rf'name="{CSRF_FIELD}" value="([^"]+)"', page)
    assert found is not None, page
    return found.group(1)


# ---- who may open it ----------------------------------------------------------------------------


def test_without_a_key_the_browser_is_asked_for_one(inspector: TestClient) -> None:
    for headers in (
        {"Authorization": ""},
        basic("bm_wrong"),
        {"Authorization": "Bearer bm_wrong"},
        {"Authorization": "Basic !!"},
    ):
        response = inspector.get("/inspect", headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == 'Basic realm="billing-mirror"'
        assert "text/html" in response.headers["content-type"]
        assert API_KEY not in response.text


@pytest.mark.parametrize(
    "headers",
    [
        basic(API_KEY),
        basic(OTHER_API_KEY, user=""),
        basic("", user=API_KEY),
        {"Authorization": f"Bearer {API_KEY}"},
    ],
    ids=["password", "second-key", "key-as-user-name", "bearer"],
)
def test_a_key_opens_every_page(inspector: TestClient, headers: dict[str, str]) -> None:
    for path in ("/inspect", "/inspect/failed", "/inspect/dead-letters", f"/inspect/object?id={ITEM}"):
        response = inspector.get(path, headers=headers)
        assert response.status_code in (200, 404), (path, response.text)  # an unknown object is 404
        assert "billing-mirror" in response.text
        assert API_KEY not in response.text and OTHER_API_KEY not in response.text
        assert "script-src" not in response.headers["content-security-policy"]  # no script may run
        assert response.headers["cache-control"] == "no-store"


def test_without_configured_keys_the_inspector_is_closed(make_settings: Callable[..., Settings]) -> None:
    with TestClient(create_app(make_settings())) as client:
        response = client.get("/inspect", headers=basic("anything"))
    assert response.status_code == 401
    assert "BILLING_MIRROR_API_KEYS" in response.text
    assert "www-authenticate" not in response.headers  # nothing to type into a prompt


# ---- the retry form's CSRF guard ------------------------------------------------------------------


def failed_event(inspector: TestClient, engine: Engine) -> str:
    add_rule(engine)
    event = refused_item_event()
    delivered(inspector, event)
    assert stored(engine)[event["id"]][0] == "failed"
    return str(event["id"])


def test_retry_is_refused_without_the_pages_token(inspector: TestClient, engine: Engine) -> None:
    event_id = failed_event(inspector, engine)
    drop_rule(engine)  # the event would apply now: only the guard stands in the way
    page = inspector.get("/inspect/failed")
    cookie = page.cookies.get(CSRF_COOKIE)
    assert cookie is not None
    set_cookie = page.headers["set-cookie"].lower()
    assert "samesite=strict" in set_cookie and "httponly" in set_cookie and "path=/inspect" in set_cookie
    token = token_of(page.text)
    forged_other_key = new_csrf_token(OTHER_API_KEY)
    attempts: list[tuple[dict[str, str], dict[str, str], dict[str, str]]] = [
        ({"event_id": event_id}, {CSRF_COOKIE: cookie}, {}),  # no field
        ({"event_id": event_id, CSRF_FIELD: token}, {}, {}),  # no cookie (a cross-site POST)
        ({"event_id": event_id, CSRF_FIELD: token + "x"}, {CSRF_COOKIE: token + "x"}, {}),  # bad signature
        ({"event_id": event_id, CSRF_FIELD: "abc"}, {CSRF_COOKIE: cookie}, {}),  # field and cookie differ
        # signed with another key than the POST presents
        ({"event_id": event_id, CSRF_FIELD: forged_other_key}, {CSRF_COOKIE: forged_other_key}, {}),
        # another site's page
        (
            {"event_id": event_id, CSRF_FIELD: token},
            {CSRF_COOKIE: cookie},
            {"Origin": "https://evil.example"},
        ),
    ]
    for form, cookies, headers in attempts:
        inspector.cookies.clear()
        response = inspector.post("/inspect/retry", data=form, cookies=cookies, headers=headers)
        assert response.status_code == 403, (form, cookies, headers, response.text)
    assert stored(engine)[event_id][:2] == ("failed", 1)  # not one of them was applied

    response = inspector.post(
        "/inspect/retry", data={"event_id": event_id, CSRF_FIELD: token}, cookies={CSRF_COOKIE: cookie}
    )
    assert response.status_code == 200, response.text  # the page's own token and cookie pass
    assert stored(engine)[event_id][:2] == ("applied", 2)


def test_retry_re_applies_a_failed_event_once_its_cause_is_fixed(
    inspector: TestClient, engine: Engine
) -> None:
    event_id = failed_event(inspector, engine)
    outcome, attempts, error = stored(engine)[event_id]
    assert (outcome, attempts) == ("failed", 1) and error is not None and RULE_MESSAGE in error
    page = inspector.get("/inspect/failed")
    assert event_id in page.text and RULE_MESSAGE in page.text
    token = token_of(page.text)

    still = inspector.post("/inspect/retry", data={"event_id": event_id, CSRF_FIELD: token})
    assert still.status_code == 200 and "failed" in still.text  # the rule still stands
    assert stored(engine)[event_id][:2] == ("failed", 2)

    drop_rule(engine)
    retried = inspector.post("/inspect/retry", data={"all": "1", CSRF_FIELD: token})
    assert retried.status_code == 200, retried.text
    assert stored(engine)[event_id] == ("applied", 3, None)
    with engine.connect() as connection:
        assert (
            connection.execute(
                text("SELECT amount FROM invoice_items WHERE id = :id"), {"id": REFUSED_ITEM}
            ).scalar_one()
            == 700
        )
    again = inspector.post(
        "/inspect/retry", data={"event_id": [event_id, "evt_\x00", "evt_unknown"], CSRF_FIELD: token}
    )
    assert again.status_code == 200, again.text
    assert "left as it was" in again.text  # not failed any more: a duplicate, nothing applied twice
    assert again.text.count(">not found<") == 2
    assert stored(engine)[event_id] == ("applied", 3, None)


# ---- escaping ---------------------------------------------------------------------------------


HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def test_what_was_delivered_is_escaped_everywhere(inspector: TestClient) -> None:
    obj = item("ii_<b>bold</b>", T0, description=HOSTILE)
    event = make_event("invoiceitem.created", obj, event_id="evt_<i>x</i>", created=T0)
    event["type"] = "invoiceitem.created"
    delivered(
        inspector,
        event,
        make_event("invoiceitem.updated", {**obj, "description": HOSTILE + "2"}, created=T0 + 5),
    )
    pages = [
        inspector.get("/inspect"),
        inspector.get("/inspect/object", params={"id": obj["id"]}),
        inspector.get("/inspect/event", params={"id": event["id"]}),
        inspector.get("/inspect", params={"object": obj["id"], "type": HOSTILE}),
        inspector.get("/inspect/object", params={"id": HOSTILE}),
    ]
    for page in pages:
        assert "<script>" not in page.text and "<img" not in page.text and "<b>bold" not in page.text, (
            page.text
        )
    assert "ii_&lt;b&gt;bold&lt;/b&gt;" in pages[1].text
    assert "&lt;script&gt;" in pages[1].text  # the description, in the row and in the diff
    assert "evt_&lt;i&gt;x&lt;/i&gt;" in pages[0].text


# ---- filters, paging, history, overview ---------------------------------------------------------


def event_ids(page: str) -> list[str]:
    return re.findall(r'href="/inspect/event\?id=([^"]+)"', page)


def history_ids(page: str) -> list[str]:
    """The events of an object's history table, in order (the tables below it link events too)."""
    return event_ids(page.split('id="history"')[1].split("<h2>")[0])


def test_filters_by_type_outcome_object_and_time(inspector: TestClient, engine: Engine) -> None:
    delivered(inspector, *item_history(), invoice_event())
    failed = failed_event(inspector, engine)
    everything = event_ids(inspector.get("/inspect").text)
    assert len(everything) == 5
    assert event_ids(inspector.get("/inspect", params={"type": "invoiceitem.updated"}).text) == [
        "evt_inspect_item_2",
        "evt_inspect_item_0",
    ]
    assert event_ids(inspector.get("/inspect", params={"type": "invoice.*"}).text) == [invoice_event()["id"]]
    assert event_ids(inspector.get("/inspect", params={"outcome": "failed"}).text) == [failed]
    assert event_ids(inspector.get("/inspect", params={"outcome": "stale"}).text) == ["evt_inspect_item_0"]
    assert event_ids(inspector.get("/inspect", params={"object": ITEM}).text) == [
        "evt_inspect_item_2",
        "evt_inspect_item_0",
        "evt_inspect_item_1",
    ]
    window = {"object": ITEM, "since": str(T0 + 30), "until": "2026-01-01T00:01:00Z"}  # [T0+30, T0+60)
    assert event_ids(inspector.get("/inspect", params=window).text) == ["evt_inspect_item_0"]
    for bad in ({"since": "yesterday"}, {"outcome": "refused"}, {"older": "nonsense"}):
        response = inspector.get("/inspect", params=bad)
        assert response.status_code == 400, bad


def test_pages_are_keyset_paged_newest_first(inspector: TestClient) -> None:
    events = [
        make_event(
            "invoiceitem.created",
            item(f"ii_page_{n:03d}", T0),
            event_id=f"evt_page_{n:03d}",
            created=T0 + n // 3,
        )
        for n in range(120)
    ]
    delivered(inspector, *events)
    expected = [event["id"] for event in sorted(events, key=lambda e: (e["created"], e["id"]), reverse=True)]
    seen: list[str] = []
    url: str | None = "/inspect?type=invoiceitem.created"
    pages = []
    while url is not None:
        page = inspector.get(url)
        pages.append(page.text)
        seen += event_ids(page.text)
        found = re.search(r'href="([^"]+)" rel="next"', page.text)
        url = None if found is None else found.group(1).replace("&amp;", "&")
    assert seen == expected and len(pages) == 3
    newer = re.search(r'href="([^"]+)" rel="prev"', pages[2])
    assert newer is not None
    assert event_ids(inspector.get(newer.group(1).replace("&amp;", "&")).text) == expected[50:100]


def test_an_objects_page_shows_its_row_and_every_event_with_what_changed(inspector: TestClient) -> None:
    delivered(inspector, *item_history())
    page = inspector.get("/inspect/object", params={"id": ITEM})
    assert page.status_code == 200
    text_ = page.text
    assert "Current row in <code>invoice_items</code>" in text_
    assert history_ids(text_) == [
        "evt_inspect_item_1",
        "evt_inspect_item_0",
        "evt_inspect_item_2",
    ]
    history = text_.split('id="history"')[1]
    assert history.count('class="outcome stale"') == 1 and history.count('class="outcome applied"') == 2
    assert "first snapshot shown" in history
    assert re.search(
        r"<td class=\"id\">amount</td><td>changed</td>\s*"
        r"<td class=\"id\">1</td><td>→</td>\s*<td class=\"id\">2500</td>",
        history,
    )
    assert "Setup fee, corrected" in history


def test_a_lines_page_follows_its_invoice_events(inspector: TestClient) -> None:
    event = invoice_event()
    delivered(inspector, event)
    line = event["data"]["object"]["lines"]["data"][0]
    page = inspector.get("/inspect/object", params={"id": line["id"]})
    assert page.status_code == 200
    assert "Current row in <code>invoice_line_items</code>" in page.text
    assert history_ids(page.text) == [event["id"]]
    assert "via invoice" in page.text
    invoice_page = inspector.get("/inspect/object", params={"id": event["data"]["object"]["id"]})
    assert f'href="/inspect/object?id={line["id"]}"' in invoice_page.text  # its lines link to their pages


def test_unknown_objects_and_events_are_404(inspector: TestClient) -> None:
    assert inspector.get("/inspect/object", params={"id": "in_nowhere"}).status_code == 404
    assert inspector.get("/inspect/event", params={"id": "evt_nowhere"}).status_code == 404
    assert inspector.get("/inspect/object").status_code == 400


def test_the_overview_counts_rows_and_shows_lag_and_sync(inspector: TestClient, engine: Engine) -> None:
    delivered(inspector, *item_history())
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO sync_state (account, resource, started_at, finished_at, objects, watermark)"
                " VALUES ('', 'invoices', :t, :t2, 42, NULL), ('', 'events', NULL, NULL, 0, :t3)"
            ),
            {"t": T0, "t2": T0 + 90, "t3": T0 + 120},
        )
    page = inspector.get("/inspect").text
    counts = dict(re.findall(r"<tr><td>(\w+)</td><td class=\"num\">(\d+)</td></tr>", page))
    assert counts["stripe_events"] == "3" and counts["invoice_items"] == "1" and counts["dead_letters"] == "0"
    lag = int(time.time()) - (T0 + 60)  # the newest applied event was created at T0 + 60
    assert "newest applied event created 2026-01-01 00:01:00Z" in page
    assert lag > 0
    state = page.split('id="sync-state"')[1].split("</table>")[0]
    assert "invoices" in state and "42" in state and "2026-01-01 00:01:30Z" in state
    assert "events" in state and "2026-01-01 00:02:00Z" in state


def test_dead_letters_are_listed_read_only(inspector: TestClient) -> None:
    import json as json_module

    from tests.support import signed_headers

    body = json_module.dumps({"id": "evt_<letter>", "type": "<no>"}).encode()
    response = inspector.post(
        "/webhooks/stripe", content=body, headers=signed_headers(body, int(time.time()))
    )
    assert response.json()["outcome"] == "refused"
    page = inspector.get("/inspect/dead-letters").text
    assert "invalid_event" in page and "evt_&lt;letter&gt;" in page and "<letter>" not in page
    assert '<form method="post"' not in page


def test_meters_alerts_payments_and_templates_have_pages(inspector: TestClient, tmp_path: Any) -> None:
    from tests.support import load_fixture, recorded, run_cli

    meter_events = [recorded("billing.meter.created"), recorded("billing.meter.updated")]
    alert_event = recorded("billing.alert.triggered")
    payment_event = load_fixture("invoice_payment.paid.json")
    delivered(inspector, *meter_events, alert_event, payment_event)
    meter = meter_events[0]["data"]["object"]["id"]
    page = inspector.get("/inspect/object", params={"id": meter}).text
    assert history_ids(page) == [event["id"] for event in meter_events]
    assert "Current row in <code>billing_meters</code>" in page

    alert = alert_event["data"]["object"]["alert"]["id"]
    page = inspector.get("/inspect/object", params={"id": alert}).text
    assert history_ids(page) == [alert_event["id"]] and "via alert" in page
    assert "Triggers" in page  # billing_alert_triggers, around the alert

    payment = payment_event["data"]["object"]["id"]
    page = inspector.get("/inspect/object", params={"id": payment}).text
    assert history_ids(page) == [payment_event["id"]]

    database_url = inspector.app.state.settings.database_url  # type: ignore[attr-defined]
    templates = str(FIXTURES_BILLING / "invoice_rendering_templates.list.json")
    assert run_cli("backfill", "templates", templates, "--database-url", database_url).exit_code == 0
    template = json.loads(Path(templates).read_text())["data"][0]["id"]
    page = inspector.get("/inspect/object", params={"id": template})
    assert page.status_code == 200 and "Current row in <code>invoice_rendering_templates</code>" in page.text
    assert "snapshot.invoice_rendering_template" in page.text.split('id="history"')[1]


def test_bounds_past_64_bits_are_refused_not_sent(inspector: TestClient) -> None:
    for params in ({"since": str(2**63)}, {"until": "-" + str(2**64)}, {"older": f"{2**63}:evt_x"}):
        assert inspector.get("/inspect", params=params).status_code == 400, params


ODD_VALUES = [
    "",
    " ",
    "\x00",
    "%00",
    "x" * 300,
    "é",
    "\ud7ff",
    "-1",
    "99999999999999999999999",
    "1:",
    ":x",
    "'; --",
    "*",
]


def test_no_parameter_gives_a_server_error(inspector: TestClient) -> None:
    delivered(inspector, *item_history())
    for path, names in {
        "/inspect": ("type", "outcome", "object", "since", "until", "older", "newer"),
        "/inspect/failed": ("type", "object", "older", "newer"),
        "/inspect/object": ("id",),
        "/inspect/event": ("id",),
        "/inspect/dead-letters": ("before",),
    }.items():
        for name in names:
            for value in ODD_VALUES:
                response = inspector.get(path, params={name: value})
                assert response.status_code < 500, (path, name, value, response.text)
    raw = inspector.get("/inspect/object?id=%ff%fe&type=%ed%a0%80")
    assert raw.status_code < 500
