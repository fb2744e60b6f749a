"""One access line per request (request id, tenant, route template, status, duration), as text
or JSON lines, and never any part of a token."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from ops.logs import JsonLines
from tests.support.app import InProcess, bearer
from tests.support.server import run_server


def access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "sqlfleet.access"]


def test_each_request_logs_one_line_with_its_id_and_never_the_token(
    app: InProcess, caplog: pytest.LogCaptureFixture
) -> None:
    app.create("acme")
    token = app.token("acme")
    caplog.set_level(logging.INFO, logger="sqlfleet.access")
    r = app.client.post("/v1/tenants/acme/query", json={"sql": "select 1"}, headers=bearer(token))
    assert r.status_code == 200
    (record,) = access_records(caplog)
    line = json.loads(JsonLines().format(record))
    assert line["request_id"] == r.headers["x-request-id"]
    seen = (line["tenant"], line["route"], line["status"], line["method"])
    assert seen == ("acme", "/v1/tenants/{tenant}/query", 200, "POST")
    assert line["duration_ms"] > 0 and line["level"] == "info" and line["logger"] == "sqlfleet.access"
    text = logging.Formatter("%(message)s").format(record)
    assert r.headers["x-request-id"] in text and "/v1/tenants/{tenant}/query" in text
    for piece in token.split("."):  # header, claims, signature: none of them anywhere
        assert piece not in text and piece not in json.dumps(line)


def test_a_sane_caller_request_id_is_kept_and_a_hostile_one_replaced(
    app: InProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sqlfleet.access")
    assert (
        app.client.get("/healthz", headers={"X-Request-Id": "abc-123"}).headers["x-request-id"] == "abc-123"
    )
    hostile = app.client.get("/healthz", headers={b"X-Request-Id": b"a\xe2\x80\xa8b {} " + b"x" * 100})
    assert hostile.headers["x-request-id"] != "" and "{" not in hostile.headers["x-request-id"]
    assert [vars(r)["request_id"] for r in access_records(caplog)] == [
        "abc-123",
        hostile.headers["x-request-id"],
    ]
    first = app.client.get("/nowhere")
    assert first.status_code == 404
    assert vars(access_records(caplog)[-1])["route"] == "unmatched"


def test_a_server_with_log_format_json_writes_json_access_lines_without_tokens(tmp_path: Path) -> None:
    env = {"SQLFLEET_LOG_FORMAT": "json"}
    with run_server(tmp_path / "data", env=env) as server, server.client() as client:
        assert client.post("/v1/admin/tenants", json={"id": "acme"}).status_code == 201
        token = client.post("/v1/admin/tenants/acme/tokens", json={"access": "rw"}).json()["token"]
        r = client.post("/v1/tenants/acme/query", json={"sql": "select 1"}, headers=bearer(token))
        assert r.status_code == 200
    log = server.log()
    assert server.admin_key not in log
    for piece in token.split("."):
        assert piece not in log
    entries = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    access = [e for e in entries if e["logger"] == "sqlfleet.access"]
    assert [e["route"] for e in access if e["tenant"] == "acme"] == [
        "/v1/admin/tenants/{tenant}/tokens",
        "/v1/tenants/{tenant}/query",
    ]
    assert any(e["request_id"] == r.headers["x-request-id"] for e in access)
    assert any(e["logger"].startswith("uvicorn") for e in entries)  # uvicorn's lines are JSON too
    others = [line for line in log.splitlines() if not line.startswith("{")]
    assert all(line.startswith(("sqlfleet:", "  export")) for line in others), others
