"""Every request has a total time budget (`request_timeout`) across its statements: past it
the rest do not run; REST answers 504 (a batch rolled back), Hrana an error result for each
remaining step or request, and the stream stays usable."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.app import ADMIN, InProcess, in_process
from tests.support.http_contract import checking

RUNAWAY = "with recursive r(i) as (select 1 union all select i + 1 from r) select count(*) from r"
BUDGET = 1.0  # request_timeout; each statement alone may run 5 s


@pytest.fixture
def app(tmp_path: Path) -> Iterator[InProcess]:
    with in_process(tmp_path / "data", statement_timeout=5.0, request_timeout=BUDGET) as running:
        running.create("acme")
        running.query("acme", "create table t(x)")
        yield running


def test_a_statement_is_cut_at_the_request_deadline(app: InProcess) -> None:
    checking(app.client)
    started = time.monotonic()
    r = app.query("acme", RUNAWAY)
    elapsed = time.monotonic() - started
    assert (r.status_code, r.json()["error"]["code"]) == (504, "request_time_limit")
    assert BUDGET <= elapsed < BUDGET + 1.5


def test_a_batch_stops_at_the_request_deadline_and_rolls_back(app: InProcess) -> None:
    checking(app.client)
    body = {"statements": [{"sql": "insert into t values (1)"}] + [{"sql": RUNAWAY}] * 12}
    started = time.monotonic()
    r = app.client.post("/v1/tenants/acme/batch", json=body, headers=ADMIN)
    elapsed = time.monotonic() - started
    assert r.status_code == 504 and r.json()["error"]["code"] == "request_time_limit"
    assert r.json()["error"]["index"] == 1
    assert elapsed < BUDGET + 1.5  # before: 12 statements x their own limit
    assert app.query("acme", "select count(*) from t").json()["rows"] == [[0]]


def _pipeline(app: InProcess, requests: list[dict[str, Any]], baton: str | None = None) -> Any:
    body = {"baton": baton, "requests": requests}
    r = app.client.post("/v1/tenants/acme/v3/pipeline", json=body, headers=ADMIN)
    assert r.status_code == 200, r.text
    return r.json()


def test_a_hrana_batch_stops_at_the_deadline_with_errors_for_the_rest(app: InProcess) -> None:
    """The issue: a Hrana batch of 12 endless CTEs held a worker ~24 s (each step timed out at
    2 s, a failed step does not stop the batch)."""
    steps = [{"stmt": {"sql": RUNAWAY}} for _ in range(12)]
    started = time.monotonic()
    out = _pipeline(app, [{"type": "batch", "batch": {"steps": steps}}])
    elapsed = time.monotonic() - started
    assert elapsed < BUDGET + 1.5
    errors = out["results"][0]["response"]["result"]["step_errors"]
    assert len(errors) == 12 and all(e["code"] == "REQUEST_TIME_LIMIT" for e in errors)


def test_a_hrana_pipeline_past_its_deadline_keeps_its_stream_sane(app: InProcess) -> None:
    first = _pipeline(app, [{"type": "execute", "stmt": {"sql": "begin"}}])
    baton = first["baton"]
    requests: list[dict[str, Any]] = [
        {"type": "execute", "stmt": {"sql": "insert into t values (7)"}},
        {"type": "execute", "stmt": {"sql": RUNAWAY}},
        {"type": "execute", "stmt": {"sql": "select 1"}},
        {"type": "store_sql", "sql_id": 1, "sql": "select count(*) from t"},
        {"type": "get_autocommit"},
    ]
    out = _pipeline(app, requests, baton)
    kinds = [r["type"] for r in out["results"]]
    assert kinds == ["ok", "error", "error", "ok", "ok"]
    assert out["results"][1]["error"]["code"] == "REQUEST_TIME_LIMIT"
    assert out["results"][2]["error"]["code"] == "REQUEST_TIME_LIMIT"
    # the stream goes on: the same baton chain, the stored SQL, the transaction as SQLite left it
    autocommit = out["results"][4]["response"]["is_autocommit"]
    after = _pipeline(
        app, [{"type": "execute", "stmt": {"sql_id": 1}}, {"type": "get_autocommit"}], out["baton"]
    )
    assert after["results"][1]["response"]["is_autocommit"] == autocommit
    count = after["results"][0]["response"]["result"]["rows"][0][0]["value"]
    assert count == ("0" if autocommit else "1")
    _pipeline(app, [{"type": "close"}], after["baton"])
