"""Serving a StripeServer over real HTTP on 127.0.0.1 (uvicorn in a background thread) and stripe-python
clients pointed at it."""

from __future__ import annotations

import atexit
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import stripe
import uvicorn

from tests.stripe_server.app import API_KEY, StripeServer


class NoSleepRequestsClient(stripe.RequestsClient):
    """stripe-python's requests transport with its retry backoff recorded instead of slept, so retry tests
    are fast and can still assert the delays the SDK chose."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sleeps: list[float] = []

    def _sleep_time_seconds(self, num_retries: int) -> float:
        self.sleeps.append(super()._sleep_time_seconds(num_retries))
        return 0.0


@dataclass
class RunningServer:
    server: StripeServer
    url: str

    def client(
        self,
        *,
        api_key: str = API_KEY,
        max_network_retries: int = 0,
        stripe_account: str | None = None,
        stripe_version: str | None = None,
        http_client: stripe.HTTPClient | None = None,
    ) -> stripe.StripeClient:
        """A StripeClient for this server, pinned to its API version (as the sync client must be)."""
        return stripe.StripeClient(
            api_key,
            base_addresses={"api": self.url},
            stripe_version=stripe_version or self.server.config.api_version,
            stripe_account=stripe_account,
            max_network_retries=max_network_retries,
            http_client=http_client or NoSleepRequestsClient(timeout=10),
        )


@contextmanager
def serve(server: StripeServer | None = None) -> Iterator[RunningServer]:
    """Serve ``server`` (a new one by default) on a free port of 127.0.0.1 until the block ends."""
    server = server or StripeServer()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # the app sets Date from its own clock; uvicorn's would be a second, wall-clock one
    config = uvicorn.Config(
        server.app,
        lifespan="off",
        log_level="warning",
        access_log=False,
        date_header=False,
        server_header=False,
    )
    http_server = uvicorn.Server(config)
    thread = threading.Thread(target=http_server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not http_server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the Stripe test server did not start")
        time.sleep(0.005)
    try:
        yield RunningServer(server, f"http://127.0.0.1:{port}")
    finally:
        http_server.should_exit = True
        thread.join(timeout=10)
        sock.close()


_shared: list[RunningServer] = []


def shared_server() -> RunningServer:
    """One server for the whole test run, started on first use and stopped at exit; reset by each caller."""
    if not _shared:
        context = serve()
        _shared.append(context.__enter__())
        atexit.register(context.__exit__, None, None, None)
    return _shared[0]
