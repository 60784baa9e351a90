"""The inspector in a real headless browser (Debian's chromium through chromedriver, driven by
selenium), against ``billing-mirror serve`` in a subprocess on SQLite and PostgreSQL: open the page
with HTTP Basic, filter, follow an object, retry a failed event and check the database after. A
screenshot of each page is saved under test-artifacts/inspector/.

Where there is no browser the tests skip with the reason, except under CI=true, where they fail
(.ci/run installs chromium and chromium-driver)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text

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
from tests.support import API_KEY, PROJECT_ROOT, LiveServer, encode, signed_headers, stored

CHROMIUM = os.environ.get("BILLING_MIRROR_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("BILLING_MIRROR_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
ARTIFACTS = PROJECT_ROOT / "test-artifacts" / "inspector"

pytestmark = pytest.mark.slow


def browser_problem() -> str | None:
    """None when a headless browser can be driven here, else why not."""
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (pip install -e '.[test]')"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (Path(path).is_file() or shutil.which(path)):
            return f"no {path}: apt-get install -y {package}"
    return None


@pytest.fixture
def browser() -> Iterator[Any]:
    problem = browser_problem()
    if problem is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true requires the browser tests' browser. {problem}")
        pytest.skip(problem)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1200,800",
    ):
        options.add_argument(argument)
    # The driver is given: selenium-manager is never asked to download one.
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def post_event(server: LiveServer, event: dict[str, Any]) -> dict[str, Any]:
    body = encode(event)
    response = httpx.post(
        f"{server.url}/webhooks/stripe", content=body, headers=signed_headers(body, int(time.time()))
    )
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def screenshot(driver: Any, backend: str, name: str, *, whole_page: bool = True) -> Path:
    """The page as shown (``whole_page``: as tall as its content, up to 3,000 pixels)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{backend}-{name}.png"
    size = driver.get_window_size()
    if whole_page:
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(size["width"], min(max(int(height) + 120, size["height"]), 3000))
    try:
        driver.save_screenshot(str(path))
    finally:
        driver.set_window_size(size["width"], size["height"])
    return path


def click_and_wait(driver: Any, element: Any) -> None:
    """Click what leaves the page (a link, a submit button) and wait for the next page."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    old = driver.find_element("tag name", "html")
    element.click()

    def left_the_page(_driver: Any) -> bool:
        try:
            old.is_enabled()
        except WebDriverException:  # stale; chromedriver may also say "does not belong to the document"
            return True
        return False

    WebDriverWait(driver, 20).until(left_the_page)
    WebDriverWait(driver, 20).until(lambda d: d.execute_script("return document.readyState") == "complete")


def rows_of(driver: Any, table_id: str) -> list[str]:
    return [row.text for row in driver.find_elements("css selector", f"#{table_id} > tbody > tr")]


def test_open_filter_follow_an_object_and_retry_a_failed_event(
    browser: Any, live_server: Callable[..., LiveServer], engine: Engine, db_url: str
) -> None:
    backend = "sqlite" if db_url.startswith("sqlite") else "postgresql"
    server = live_server(BILLING_MIRROR_API_KEYS=API_KEY)
    add_rule(engine)
    try:
        for event in [*item_history(), invoice_event()]:
            post_event(server, event)
        refused = refused_item_event()
        assert post_event(server, refused)["outcome"] == "failed"
        letter = json.dumps({"id": "evt_not_an_envelope", "hello": "<b>world</b>"}).encode()
        httpx.post(
            f"{server.url}/webhooks/stripe", content=letter, headers=signed_headers(letter, int(time.time()))
        )

        # HTTP Basic as a browser sends it: the key as the password, any user name.
        root = server.url.replace("http://", f"http://ops:{API_KEY}@") + "/inspect"
        browser.get(root)
        assert browser.title.startswith("Events")
        assert len(rows_of(browser, "events")) == 5
        assert browser.find_element("id", "failed-count").text.endswith("1")
        counts = {row.split()[0]: row.split()[-1] for row in rows_of(browser, "counts")}
        assert (
            counts["stripe_events"] == "5"
            and counts["invoice_items"] == "1"
            and counts["dead_letters"] == "1"
        )
        assert "Lag" in browser.find_element("id", "lag").text
        screenshot(browser, backend, "events")

        # Filter: item events that failed.
        browser.find_element("name", "type").send_keys("invoiceitem.*")
        browser.find_element("css selector", "select[name=outcome] option[value=failed]").click()
        click_and_wait(browser, browser.find_element("css selector", "form.filters button[type=submit]"))
        [only] = rows_of(browser, "events")
        assert refused["id"] in only and RULE_MESSAGE in only
        screenshot(browser, backend, "events-filtered")

        # Follow an object: from the unfiltered list, the changed item.
        browser.get(root + "?object=" + ITEM)
        click_and_wait(browser, browser.find_element("link text", ITEM))
        assert browser.find_element("tag name", "h1").text == ITEM
        history = rows_of(browser, "history")
        assert [row.split()[3] for row in history] == [
            "evt_inspect_item_1",
            "evt_inspect_item_0",
            "evt_inspect_item_2",
        ]
        assert "stale" in history[1] and "applied" in history[2]
        assert "amount changed 1 → 2500" in history[2]
        screenshot(browser, backend, "object")
        screenshot(browser, backend, "object-top", whole_page=False)  # docs/inspector-object.png

        # The failed event: its error, then the retry once the rule that refused its row is gone.
        click_and_wait(browser, browser.find_element("link text", "Failed"))
        [failed] = rows_of(browser, "failed")
        assert refused["id"] in failed and RULE_MESSAGE in failed
        screenshot(browser, backend, "failed")
        drop_rule(engine)
        browser.find_element("css selector", f"input[name=event_id][value={refused['id']}]").click()
        click_and_wait(browser, browser.find_element("id", "retry-selected"))
        [result] = rows_of(browser, "retried")
        assert refused["id"] in result and "applied" in result
        screenshot(browser, backend, "retried")
        assert stored(engine)[refused["id"]] == ("applied", 2, None)
        with engine.connect() as connection:
            amount = connection.execute(
                text("SELECT amount FROM invoice_items WHERE id = :id"), {"id": REFUSED_ITEM}
            )
            assert amount.scalar_one() == 700

        # The retried event's object, and the dead letters (read-only).
        browser.get(root + "/object?id=" + REFUSED_ITEM)
        assert "applied after 2 attempts" in rows_of(browser, "history")[0]
        click_and_wait(browser, browser.find_element("link text", "Dead letters"))
        [dead] = rows_of(browser, "dead-letters")
        assert "invalid_event" in dead and "evt_not_an_envelope" in dead
        assert browser.find_elements("css selector", "form[method=post]") == []
        screenshot(browser, backend, "dead-letters")

        # A line: its invoice's events.
        line = invoice_event()["data"]["object"]["lines"]["data"][0]["id"]
        browser.get(root + "/object?id=" + line)
        assert "via invoice" in rows_of(browser, "history")[0]
        screenshot(browser, backend, "line")
    finally:
        drop_rule(engine)
