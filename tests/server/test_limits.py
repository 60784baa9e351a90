"""The settings of the connection guard, from the environment and from ``serve``'s options, the
limit that fits the open file limit, and warnings that cannot flood the log."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import pytest

from app.server import ConnectionLimits
from app.settings import ConfigurationError, Settings
from app.webhook.logs import ThrottledWarning
from tests.support import run_cli


def test_defaults_and_the_environment() -> None:
    defaults = Settings.from_env({})
    assert (
        defaults.header_timeout_seconds,
        defaults.body_timeout_seconds,
        defaults.keep_alive_seconds,
        defaults.max_connections,
    ) == (10, 30, 5, 1000)
    settings = Settings.from_env(
        {
            "BILLING_MIRROR_HEADER_TIMEOUT": "3s",
            "BILLING_MIRROR_BODY_TIMEOUT": "2m",
            "BILLING_MIRROR_KEEP_ALIVE": "7",
            "BILLING_MIRROR_MAX_CONNECTIONS": "50",
        }
    )
    assert (
        settings.header_timeout_seconds,
        settings.body_timeout_seconds,
        settings.keep_alive_seconds,
        settings.max_connections,
    ) == (3, 120, 7, 50)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"BILLING_MIRROR_HEADER_TIMEOUT": "soon"},
            "BILLING_MIRROR_HEADER_TIMEOUT: 'soon' is not a duration",
        ),
        (
            {"BILLING_MIRROR_BODY_TIMEOUT": "0"},
            "BILLING_MIRROR_BODY_TIMEOUT: '0' is not a duration above zero",
        ),
        ({"BILLING_MIRROR_MAX_CONNECTIONS": "0"}, "BILLING_MIRROR_MAX_CONNECTIONS must be greater than 0"),
    ],
)
def test_malformed_values_are_explained(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Settings.from_env(env)


def test_serve_options_reach_the_server_and_the_environment_of_its_workers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "environ", dict(os.environ))  # serve writes the workers' settings there
    served: dict[str, Any] = {}
    monkeypatch.setattr(
        "app.server.run_server", lambda settings, **where: served.update(settings=settings, **where)
    )
    options = [
        "--header-timeout",
        "4s",
        "--body-timeout",
        "1m",
        "--keep-alive",
        "2",
        "--max-connections",
        "9",
    ]
    result = run_cli("serve", "--no-migrate", "--secret", "whsec_x", "--workers", "2", *options)
    assert result.exit_code == 0, result.output
    settings = served["settings"]
    assert (settings.header_timeout_seconds, settings.body_timeout_seconds) == (4, 60)
    assert (settings.keep_alive_seconds, settings.max_connections, served["workers"]) == (2, 9, 2)
    assert settings.server_processes == 2  # each stores its batches through its writer thread
    assert Settings.from_env() == settings  # what each worker process reads


def test_the_connection_limit_fits_the_open_file_limit(caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(max_connections=1000, header_timeout_seconds=1, body_timeout_seconds=2)
    assert ConnectionLimits.from_settings(settings, open_files=None) == ConnectionLimits(1, 2, 1000)
    assert ConnectionLimits.from_settings(settings, open_files=100_000).max_connections == 1000
    assert caplog.records == []
    assert ConnectionLimits.from_settings(settings, open_files=1024).max_connections == 960
    assert "does not fit the open file limit (1024)" in caplog.text


def test_a_flood_of_warnings_is_one_line_then_one_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    async def flood() -> None:
        warning = ThrottledWarning(
            logging.getLogger("billing_mirror.server"), "closed %d connection(s)", every=0.2
        )
        loop = asyncio.get_running_loop()
        for _ in range(500):
            warning.happened(loop)
        await asyncio.sleep(0.5)  # the 499 held back are logged when the interval ends
        warning.happened(loop)  # a whole interval after that line: logged at once

    with caplog.at_level(logging.WARNING, logger="billing_mirror.server"):
        asyncio.run(flood())
    assert [record.getMessage() for record in caplog.records] == [
        "closed 1 connection(s)",
        "closed 499 connection(s)",
        "closed 1 connection(s)",
    ]
