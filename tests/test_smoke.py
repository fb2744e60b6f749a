from __future__ import annotations

from pathlib import Path

from tests.support.app import InProcess, bearer
from tests.support.server import run_server


def test_query_roundtrip_in_process(app: InProcess) -> None:
    app.create("acme")
    token = app.token("acme")
    assert app.query("acme", "create table t(x)", token=token).status_code == 200
    r = app.query("acme", "insert into t values (?)", [{"base64": "AAE="}], token=token)
    assert r.json()["rows_affected"] == 1
    assert app.query("acme", "select x from t", token=token).json()["rows"] == [[{"base64": "AAE="}]]


def test_real_server_process(tmp_path: Path) -> None:
    with run_server(tmp_path / "data") as server, server.client() as client:
        assert client.post("/v1/admin/tenants", json={"id": "acme"}).status_code == 201
        token = client.post("/v1/admin/tenants/acme/tokens", json={}).json()["token"]
        r = client.post("/v1/tenants/acme/query", json={"sql": "select 41 + 1"}, headers=bearer(token))
        assert r.json()["rows"] == [[42]]
    assert server.proc.returncode == 0
