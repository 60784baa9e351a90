"""The fetch layer of sync, against the Stripe-compatible test server over real HTTP (stripe-python)."""

from __future__ import annotations

import itertools
from email.utils import formatdate
from typing import Any

import orjson
import pytest
import stamina
import stripe

from app.sync.fetch import (
    FetchError,
    StripeApi,
    StripeReader,
    Window,
    created_windows,
    fetch_windows,
    stripe_time,
)
from tests.stripe_server import objects
from tests.stripe_server.app import API_KEY, API_VERSION
from tests.stripe_server.faults import lock_timeout_error, rate_limit_error
from tests.stripe_server.runner import RunningServer
from tests.stripe_server.store import INVOICE_ITEMS, INVOICES

T0 = 1_767_225_600  # 2026-01-01 00:00:00 UTC


def reader_for(
    stripe_api: RunningServer, *, max_rps: float = 1000, account: str | None = None
) -> StripeReader:
    """A reader built as production builds it (stripe-python's own transport), aimed at the server."""
    api = StripeApi(API_KEY, API_VERSION, api_base=stripe_api.url, stripe_account=account, max_rps=max_rps)
    return StripeReader(api)


def test_every_page_of_a_list_with_same_second_ties_once_as_stripe_sent_it(stripe_api: RunningServer) -> None:
    store = stripe_api.server.store
    store.shuffle_ties(7)  # objects of one second in an order that is not their ids'
    items = [
        objects.invoice_item(date=T0 + number % 3, quantity_decimal="1.50", unit_amount_decimal="12.5")
        for number in range(250)
    ]
    store.put_many(INVOICE_ITEMS, items)
    stripe_api.server.clock.set(T0 + 3600)

    pages = list(reader_for(stripe_api).pages("/v1/invoiceitems"))

    assert [(len(page.objects), page.has_more) for page in pages] == [(100, True), (100, True), (50, False)]
    fetched = [obj for page in pages for obj in page.objects]
    assert sorted(obj["id"] for obj in fetched) == sorted(item["id"] for item in items)
    assert len({obj["id"] for obj in fetched}) == 250
    by_id = {item["id"]: item for item in items}
    # The JSON Stripe sent, decimal strings included (the SDK's objects would hold Decimals).
    assert all(orjson.loads(orjson.dumps(obj)) == by_id[obj["id"]] for obj in fetched)
    assert fetched[0]["unit_amount_decimal"] == "12.5"
    assert {page.fetched_at for page in pages} == {T0 + 3600}  # Stripe's clock, not ours
    assert all(page.request_id and page.request_id.startswith("req_") for page in pages)
    requests = stripe_api.server.log.matching("/v1/invoiceitems")
    assert [entry.params["limit"] for entry in requests if entry.params] == ["100"] * 3
    assert all(entry.headers["stripe-version"] == API_VERSION for entry in requests)


def test_a_connect_account_reads_only_its_own_objects(stripe_api: RunningServer) -> None:
    store = stripe_api.server.store
    store.add_account("acct_connected")
    store.put(INVOICES, objects.invoice(created=T0), account="acct_connected")
    store.put(INVOICES, objects.invoice(created=T0))
    (page,) = reader_for(stripe_api, account="acct_connected").pages("/v1/invoices")
    assert len(page.objects) == 1
    assert stripe_api.server.log.entries[-1].headers["stripe-account"] == "acct_connected"


def test_a_rate_limited_429_is_retried_by_the_reader_and_a_lock_timeout_by_the_sdk(
    stripe_api: RunningServer,
) -> None:
    store = stripe_api.server.store
    store.put_many(INVOICES, [objects.invoice(created=T0 + number) for number in range(3)])
    faults = stripe_api.server.faults
    faults.add(rate_limit_error("endpoint-rate"), path="/v1/invoices", nth=1)
    # The first request this rule sees is the second one: the rule above took the first.
    faults.add(lock_timeout_error(), path="/v1/invoices", nth=1)
    api = StripeApi(API_KEY, API_VERSION, api_base=stripe_api.url, max_rps=1000)
    # The test server's client records the SDK's back-off instead of sleeping it.
    reader = StripeReader(api, client=stripe_api.client(max_network_retries=2))
    with stamina.set_testing(True, attempts=3):  # our back-off, without its sleeps
        (page,) = list(reader.pages("/v1/invoices"))
    assert len(page.objects) == 3
    statuses = [entry.status for entry in stripe_api.server.log.matching("/v1/invoices")]
    assert statuses == [429, 429, 200]  # rate limit: ours; lock timeout: the SDK's retry
    assert reader.requests == 2  # the SDK's retry is inside one of our requests


def test_a_rate_limit_that_never_ends_fails_after_the_attempts(stripe_api: RunningServer) -> None:
    stripe_api.server.faults.add(rate_limit_error(), path="/v1/invoices")
    reader = reader_for(stripe_api)
    with stamina.set_testing(True, attempts=2), pytest.raises(Exception, match="rate limit"):
        list(reader.pages("/v1/invoices"))
    assert len(stripe_api.server.log.matching("/v1/invoices")) == 2


def test_the_limiter_keeps_the_request_rate(stripe_api: RunningServer) -> None:
    """At most max_rps in any second and a tenth of it in any 100 ms, measured where the server is."""
    store = stripe_api.server.store
    store.put_many(INVOICES, [objects.invoice(created=T0 + number) for number in range(30)])
    reader = reader_for(stripe_api, max_rps=50)
    for _ in range(30):
        reader.get("/v1/invoices", {"limit": 1})
    arrivals = [entry.monotonic for entry in stripe_api.server.log.matching("/v1/invoices")]
    assert len(arrivals) == 30
    slack = 0.01  # the limiter's clock and the server's see a request a few ms apart
    for first, later in itertools.combinations(range(len(arrivals)), 2):
        if arrivals[later] - arrivals[first] < 0.1 - slack:
            assert later - first < 5, "more than 5 requests in 100 ms"
    assert arrivals[-1] - arrivals[0] >= 0.5 - slack


def test_windows_cover_the_range_exactly_newest_first() -> None:
    windows = created_windows(T0, T0 + 10, 3)
    assert windows == [Window(T0 + 6, T0 + 10), Window(T0 + 3, T0 + 6), Window(T0, T0 + 3)]
    assert created_windows(T0, T0 + 2, 5) == [Window(T0 + 1, T0 + 2), Window(T0, T0 + 1)]
    assert created_windows(T0, T0, 4) == []
    assert Window(T0, T0 + 3).params() == {"created": {"gte": T0, "lt": T0 + 3}}


def test_windows_fetched_in_parallel_give_every_object_once_and_say_when_each_is_complete(
    stripe_api: RunningServer,
) -> None:
    store = stripe_api.server.store
    invoices = [objects.invoice(created=T0 + number // 7) for number in range(700)]  # 7 per second
    store.put_many(INVOICES, invoices)
    windows = created_windows(T0, T0 + 100, 4)
    seen: dict[Window, list[str]] = {window: [] for window in windows}
    completed: list[Window] = []
    for window, page in fetch_windows(reader_for(stripe_api), "/v1/invoices", windows, threads=3):
        assert window not in completed, "a page after its window was said complete"
        if page is None:
            completed.append(window)
        else:
            seen[window].extend(obj["id"] for obj in page.objects)
            assert all(window.start <= obj["created"] < window.end for obj in page.objects)
    assert sorted(completed, key=lambda window: window.start) == sorted(windows, key=lambda w: w.start)
    every = [object_id for ids in seen.values() for object_id in ids]
    assert sorted(every) == sorted(invoice["id"] for invoice in invoices)


def test_a_window_that_fails_fails_the_fetch(stripe_api: RunningServer) -> None:
    stripe_api.server.store.put_many(INVOICES, [objects.invoice(created=T0 + number) for number in range(10)])
    stripe_api.server.faults.add(rate_limit_error(), path="/v1/invoices")
    windows = created_windows(T0, T0 + 10, 2)
    with stamina.set_testing(True, attempts=1), pytest.raises(Exception, match="rate limit"):
        list(fetch_windows(reader_for(stripe_api), "/v1/invoices", windows, threads=2))


def test_stripe_time_reads_the_date_header_and_refuses_none() -> None:
    headers: dict[str, Any] = {"Date": formatdate(T0 + 59, usegmt=True)}
    assert stripe_time(headers) == T0 + 59
    with pytest.raises(FetchError, match="no Date header"):
        stripe_time({})


def test_the_proxy_variables_are_honoured(stripe_api: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reader reads the proxy variables once (not per request, as requests would): a request goes
    through HTTP_PROXY, unless NO_PROXY names the host."""
    import socketserver
    import threading

    heard: list[bytes] = []

    class Proxy(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            heard.append(self.rfile.readline())
            self.wfile.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    stripe_api.server.store.put(INVOICES, objects.invoice(created=T0))
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Proxy) as proxy:
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.server_address[1]}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        with stamina.set_testing(True, attempts=1), pytest.raises(stripe.APIError):
            reader_for(stripe_api).page("/v1/invoices")
        assert heard and heard[0].startswith(f"GET {stripe_api.url}/v1/invoices?".encode())
        through_the_proxy = len(heard)  # the SDK's own quick retries included

        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        assert len(reader_for(stripe_api).page("/v1/invoices").objects) == 1
        assert len(heard) == through_the_proxy
        proxy.shutdown()
