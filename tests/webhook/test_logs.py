"""Logs: one line per delivery with its ids, outcome and time to commit, uvicorn's access log in the
same format, text or JSON, the level switch, and never a secret, a key or a payload in any line."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from app.cli.main import cli
from app.main import create_app
from app.settings import ConfigurationError, Settings
from app.webhook.logs import configure_logging
from tests.support import (
    API_KEY,
    SECRET,
    LiveServer,
    deliver,
    encode,
    item,
    make_event,
    signed_headers,
)

MARKER = "payload-marker-7f3a"  # in every body sent: it must never reach the log
LOGGERS = ("billing_mirror", "uvicorn", "uvicorn.error", "uvicorn.access")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure_logging changes loggers of this (pytest's) process: put them back afterwards."""
    saved = {
        name: (list(logger.handlers), logger.level, logger.propagate, list(logger.filters))
        for name in LOGGERS
        for logger in [logging.getLogger(name)]
    }
    yield
    for name, (handlers, level, propagate, filters) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate
        logger.filters[:] = filters


def marked_item(item_id: str, **changes: Any) -> dict[str, Any]:
    return {**item(item_id, 100, description=MARKER), **changes}


def test_one_json_line_per_delivery_and_nothing_secret(live_server: Callable[..., LiveServer]) -> None:
    server = live_server(
        BILLING_MIRROR_LOG_LEVEL="info",
        BILLING_MIRROR_LOG_FORMAT="json",
        BILLING_MIRROR_API_KEYS=API_KEY,
    )
    url = f"{server.url}/webhooks/stripe"
    good = make_event("invoiceitem.created", marked_item("ii_log1"), event_id="evt_log1")
    failing = make_event("invoiceitem.created", marked_item("ii_log2", date="abc"), event_id="evt_log2")
    sent = []
    for event in (good, good, failing):
        body = encode(event)
        sent.append(httpx.post(url, content=body, headers=signed_headers(body, int(time.time()))).json())
    assert [answer["outcome"] for answer in sent] == ["applied", "applied", "failed"]
    body = encode(good)
    forged = httpx.post(
        url, content=body, headers={"Stripe-Signature": f"t={int(time.time())},v1={'0' * 64}"}
    )
    assert forged.status_code == 400
    garbage = f"not json {MARKER}".encode()
    refused = httpx.post(url, content=garbage, headers=signed_headers(garbage, int(time.time())))
    assert refused.json()["outcome"] == "refused"
    bearer = {"Authorization": f"Bearer {API_KEY}"}
    assert httpx.get(f"{server.url}/v1/invoiceitems/ii_log1", headers=bearer).status_code == 200
    assert httpx.get(f"{server.url}/metrics", auth=("prometheus", API_KEY)).status_code == 200
    server.stop()
    assert server.process.stdout is not None
    output = server.process.stdout.read().decode()

    for secret in (SECRET, API_KEY, MARKER, "v1=", "Basic ", "Bearer "):
        assert secret not in output, secret
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]  # every line is JSON
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    # (A refused body has a warning line besides, with the reason.)
    deliveries = [line for line in lines if line["logger"] == "billing_mirror.webhook" and "outcome" in line]
    assert [
        (
            line.get("event_id"),
            line.get("type"),
            line.get("object_id"),
            line["outcome"],
            line.get("duplicate"),
        )
        for line in deliveries
    ] == [
        ("evt_log1", "invoiceitem.created", "ii_log1", "applied", False),
        ("evt_log1", "invoiceitem.created", "ii_log1", "applied", True),
        ("evt_log2", "invoiceitem.created", "ii_log2", "failed", False),
        (None, None, None, "rejected", None),  # the forged signature: its reason, nothing else
        (None, None, None, "refused", False),
    ]
    assert all(line["commit_ms"] >= 0 for line in deliveries if "commit_ms" in line)
    assert deliveries[0]["message"].startswith("delivery evt_log1 type=invoiceitem.created object=ii_log1")
    assert deliveries[3]["reason"] == "no_matching_signature"
    access = [line for line in lines if line["logger"] == "uvicorn.access"]
    # uvicorn's access log, in the same format: every request but the deliveries (they have their line).
    assert [(line["method"], line["path"], line["status"]) for line in access][-2:] == [
        ("GET", "/v1/invoiceitems/ii_log1", 200),
        ("GET", "/metrics", 200),
    ]
    assert not [line for line in access if line["path"] == "/webhooks/stripe" and line["method"] == "POST"]
    assert any("listening on" in line["message"] for line in lines)


def test_text_lines_and_the_level_switch(
    make_settings: Callable[..., Settings], restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    with TestClient(create_app(make_settings())) as client:
        configure_logging("info", "text")
        event = make_event("invoiceitem.created", marked_item("ii_text"), event_id="evt_text")
        assert deliver(client, event).status_code == 200
        logged = capsys.readouterr().err
        assert re.fullmatch(
            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO billing_mirror\.webhook delivery evt_text "
            r"type=invoiceitem\.created object=ii_text outcome=applied duplicate=false commit_ms=\d+\.\d\n",
            logged,
        ), logged
        configure_logging("warning", "text")
        assert deliver(client, event).status_code == 200  # a duplicate, at warning: no line
        assert capsys.readouterr().err == ""


def test_the_answer_is_written_before_the_delivery_line(
    make_settings: Callable[..., Settings], restore_logging: None
) -> None:
    """Stripe waits for the answer, not for the line: the delivery's line (and its metrics) come once
    the answer is written (serially the next delivery arrives meanwhile); the time to commit it
    reports is the same."""
    app = create_app(make_settings())
    sent: list[str] = []

    async def observed(scope: Any, receive: Any, send: Any) -> None:
        async def recording(message: Any) -> None:
            await send(message)
            sent.append(message["type"])

        await app(scope, receive, recording if scope["type"] == "http" else send)

    answered_at_line: list[list[str]] = []

    class AtTheLine(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("delivery evt_"):
                answered_at_line.append(list(sent))

    with TestClient(observed) as client:
        configure_logging("info", "text")
        logging.getLogger("billing_mirror.webhook").addHandler(AtTheLine())
        event = make_event("invoiceitem.created", marked_item("ii_order"), event_id="evt_order")
        assert deliver(client, event).status_code == 200
    assert answered_at_line == [["http.response.start", "http.response.body"]]


def test_other_commands_take_the_switch_too(db_url: str, restore_logging: None) -> None:
    runner = CliRunner()
    quiet = runner.invoke(cli, ["events", "prune", "--older-than", "1d", "--database-url", db_url])
    assert quiet.exit_code == 0 and quiet.stderr == ""
    loud = runner.invoke(
        cli,
        [
            "--log-level",
            "INFO",
            "--log-format",
            "json",
            "events",
            "prune",
            "--older-than",
            "1d",
            "--database-url",
            db_url,
        ],
    )
    assert loud.exit_code == 0, loud.output
    [line] = [json.loads(line) for line in loud.stderr.splitlines()]
    assert line["logger"] == "billing_mirror.prune" and line["deleted"] == 0
    from_env = runner.invoke(
        cli,
        ["events", "prune", "--older-than", "1d", "--database-url", db_url],
        env={"BILLING_MIRROR_LOG_LEVEL": "info"},
    )
    line = r"\S+Z INFO billing_mirror\.prune prune: 0 events deleted; kept 0 failed"
    assert re.match(line, from_env.stderr)


def test_log_settings_are_checked() -> None:
    assert Settings.from_env({"BILLING_MIRROR_LOG_LEVEL": "DEBUG"}).log_level == "debug"
    assert Settings.from_env({"BILLING_MIRROR_LOG_FORMAT": "JSON"}).log_format == "json"
    with pytest.raises(ConfigurationError, match="BILLING_MIRROR_LOG_LEVEL must be one of"):
        Settings.from_env({"BILLING_MIRROR_LOG_LEVEL": "verbose"})
    with pytest.raises(ConfigurationError, match="BILLING_MIRROR_LOG_FORMAT must be one of"):
        Settings.from_env({"BILLING_MIRROR_LOG_FORMAT": "xml"})


def test_serve_buffers_delivery_lines_and_writes_whole_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lines per delivery wait in the buffer; a warning (or any other logger's line) writes everything
    out, in writes of whole lines that a pipe never interleaves with another worker's."""
    import os
    import select

    from app.webhook.logs import BufferedStderrHandler, TextFormatter, log_fast

    handler = BufferedStderrHandler(shared=True)  # as each worker of serve --workers 2 has it
    os.close(handler.fd)
    reader, handler.fd = os.pipe()
    writes: list[bytes] = []
    real_write = os.write

    def recording_write(fd: int, data: Any) -> int:
        writes.append(bytes(data))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", recording_write)
    handler.setFormatter(TextFormatter())
    webhook = logging.getLogger("billing_mirror.webhook")
    monkeypatch.setattr(webhook, "handlers", [handler])
    monkeypatch.setattr(webhook, "propagate", False)
    monkeypatch.setattr(webhook, "level", logging.INFO)
    for number in range(300):
        log_fast(webhook, logging.INFO, "delivery evt_%d outcome=%s", (number, "applied"), {"n": number})
    assert writes == [] and select.select([reader], [], [], 0)[0] == []  # all still waiting
    webhook.warning("the database is unavailable")
    assert writes and all(len(write) <= select.PIPE_BUF and write.endswith(b"\n") for write in writes)
    text = b""
    while select.select([reader], [], [], 0)[0]:
        text += os.read(reader, 65536)
    lines = text.decode().splitlines()
    assert len(lines) == 301 and lines[0].endswith("delivery evt_0 outcome=applied")
    assert lines[-1].endswith("WARNING billing_mirror.webhook the database is unavailable")
    handler.close()
    assert handler.fd == -1
    os.close(reader)


def test_a_single_server_process_writes_its_buffer_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """One process alone on stderr: the buffer goes out in one write (each write hands the GIL over)."""
    import os

    from app.webhook.logs import BufferedStderrHandler, TextFormatter

    handler = BufferedStderrHandler()
    os.close(handler.fd)
    reader, handler.fd = os.pipe()
    writes: list[int] = []
    real_write = os.write

    def recording_write(fd: int, data: Any) -> int:
        writes.append(len(data))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", recording_write)
    handler.setFormatter(TextFormatter())
    for number in range(100):
        handler.handle(
            logging.makeLogRecord({"name": "uvicorn.access", "msg": f"line {number}", "levelno": 20})
        )
    assert writes == []
    handler.flush()
    assert len(writes) == 1 and writes[0] > 4096
    assert os.read(reader, 65536).decode().count("\n") == 100
    handler.close()
    os.close(reader)
