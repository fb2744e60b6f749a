"""Every parse of tenant input is linear and runs after the length limits, on every protocol:
the issue's CREATE TRIGGER with 200,000 semicolons took 35.8 s holding a worker and the tenant
(a 4 MB body, hours). Here SQL may be 4 MB long, so the lexers and SQLite do see it all."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from router.hrana.executor import _param_names
from tests.support.server import ServerProcess, run_server

TRIGGER = "CREATE TRIGGER t AFTER INSERT ON x BEGIN "
QUICK = 3.0  # seconds, on a busy machine; linear work on 4 MB takes well under one


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    args = ("--max-sql-length", "4000000", "--max-body-bytes", "8000000")
    with run_server(tmp_path_factory.mktemp("parse") / "data", *args) as running:
        with running.client() as admin:
            assert admin.post("/v1/admin/tenants", json={"id": "acme"}).status_code == 201
            admin.post("/v1/tenants/acme/query", json={"sql": "create table x(a)"})
        yield running


def _routes(sql: str) -> dict[str, tuple[str, dict[str, Any]]]:
    def pipeline(*requests: dict[str, Any]) -> dict[str, Any]:
        return {"baton": None, "requests": list(requests)}

    batch = {"steps": [{"stmt": {"sql": sql}}]}
    return {
        "REST query": ("query", {"sql": sql}),
        "REST batch": ("batch", {"statements": [{"sql": sql}]}),
        "Hrana execute": ("v2/pipeline", pipeline({"type": "execute", "stmt": {"sql": sql}})),
        "Hrana sequence": ("v3/pipeline", pipeline({"type": "sequence", "sql": sql})),
        "Hrana describe": ("v3/pipeline", pipeline({"type": "describe", "sql": sql})),
        "Hrana stored": (
            "v3/pipeline",
            pipeline(
                {"type": "store_sql", "sql_id": 1, "sql": sql}, {"type": "execute", "stmt": {"sql_id": 1}}
            ),
        ),
        "Hrana batch": ("v3/pipeline", pipeline({"type": "batch", "batch": batch})),
        "Hrana cursor": ("v3/cursor", {"baton": None, "batch": batch}),
        "Hrana v1 execute": ("v1/execute", {"stmt": {"sql": sql}}),
        "Hrana v1 batch": ("v1/batch", {"batch": batch}),
    }


@pytest.mark.parametrize("semicolons", [200_000, 3_900_000])
def test_a_trigger_of_semicolons_is_answered_quickly_on_every_route(
    server: ServerProcess, semicolons: int
) -> None:
    slow = {}
    with server.client(timeout=120) as client:
        for name, (route, body) in _routes(TRIGGER + ";" * semicolons).items():
            started = time.monotonic()
            r = client.post(f"/v1/tenants/acme/{route}", json=body)
            elapsed = time.monotonic() - started
            assert r.status_code in (200, 400), (name, r.text[:200])
            assert "syntax error" in r.text, (name, r.text[:200])
            if elapsed > QUICK:
                slow[name] = round(elapsed, 1)
        assert client.post("/v1/tenants/acme/query", json={"sql": "select 1"}).json()["rows"] == [[1]]
    assert not slow


def test_describe_names_parameters_in_linear_time(server: ServerProcess) -> None:
    # Hrana's describe gives each parameter back with its prefix: one search of the SQL per
    # name was |names| x |sql| (32k names in 400 kB: 25 s). SQLite's own prepare looks each
    # named parameter up among the earlier ones (1.6 s for 32k here): bounded by the variable
    # limit and, like any statement, by the time limit.
    names = [f"{'@:$'[i % 3]}p{i}" for i in range(1, 32_000)]
    sql = "SELECT 1 WHERE 1 IN (" + ",".join(names) + ")"
    started = time.monotonic()
    assert _param_names(sql, [n[1:] for n in names])[:3] == [":p1", "$p2", "@p3"]
    assert time.monotonic() - started < 1.0
    few = names[:2000]
    body = {
        "baton": None,
        "requests": [{"type": "describe", "sql": "SELECT 1 WHERE 1 IN (" + ",".join(few) + ")"}],
    }
    with server.client(timeout=120) as client:
        r = client.post("/v1/tenants/acme/v3/pipeline", json=body)
    params = [p["name"] for p in r.json()["results"][0]["response"]["result"]["params"]]
    assert params == few


def test_wide_conditions_and_many_parameters_are_linear(server: ServerProcess) -> None:
    steps: list[dict[str, Any]] = [{"stmt": {"sql": "SELECT 1"}}]
    ok = {"type": "ok", "step": 0}
    for _ in range(200):  # 200 steps, each waiting on an `and` of 500 conditions: 100k nodes
        steps.append({"stmt": {"sql": "SELECT 2"}, "condition": {"type": "and", "conds": [ok] * 500}})
    args = [{"type": "integer", "value": str(i)} for i in range(30_000)]
    marks = ",".join("?" * 30_000)
    requests = [
        {"type": "batch", "batch": {"steps": steps}},
        {
            "type": "execute",
            "stmt": {"sql": f"SELECT count(*) FROM (VALUES (1)) WHERE 1 IN ({marks})", "args": args},
        },
    ]
    with server.client(timeout=120) as client:
        started = time.monotonic()
        r = client.post("/v1/tenants/acme/v3/pipeline", json={"baton": None, "requests": requests})
        elapsed = time.monotonic() - started
    results = r.json()["results"]
    assert [x["type"] for x in results] == ["ok", "ok"], r.text[:300]
    assert elapsed < QUICK
