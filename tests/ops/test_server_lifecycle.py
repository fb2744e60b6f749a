"""A real `sqlfleet serve` process: signals, the data-dir lock, keys, persistence."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from ops import keys
from tests.support.app import ADMIN_KEY, bearer
from tests.support.server import free_port, run_server, start_server

RUNAWAY = "with recursive r(i) as (select 1 union all select i + 1 from r) select count(*) from r"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SQLFLEET_")}
    return {**env, **extra}


def test_a_second_server_on_the_same_data_dir_exits_with_one_clear_line(tmp_path: Path) -> None:
    with run_server(tmp_path / "data") as first:
        serve = [sys.executable, "-m", "ops", "serve"]
        cmd = [*serve, "--port", str(free_port()), "--data-dir", str(tmp_path / "data")]
        second = subprocess.run(cmd, capture_output=True, env=_env(SQLFLEET_ADMIN_KEY="k"), timeout=60)
        assert second.returncode != 0
        lines = second.stderr.decode().strip().splitlines()
        assert len(lines) == 1, lines
        assert "in use" in lines[0] and str(tmp_path / "data") in lines[0]
        assert "Traceback" not in second.stderr.decode() + second.stdout.decode()
        with first.client() as client:  # the first one never noticed
            assert client.get("/readyz").status_code == 200
    assert first.proc.returncode == 0


def test_sigterm_finishes_in_flight_work_exits_zero_and_data_and_tokens_persist(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", "--statement-timeout", "1")
    answers: list[httpx.Response | Exception] = []

    def runaway() -> None:
        with server.client() as client:
            try:
                answers.append(client.post("/v1/tenants/acme/query", json={"sql": RUNAWAY}))
            except httpx.HTTPError as exc:
                answers.append(exc)

    thread = threading.Thread(target=runaway)
    try:
        with server.client() as client:
            assert client.post("/v1/admin/tenants", json={"id": "acme"}).status_code == 201
            token = client.post("/v1/admin/tenants/acme/tokens", json={"access": "rw"}).json()["token"]
            ro = client.post("/v1/admin/tenants/acme/tokens", json={"access": "ro"}).json()["token"]
            for sql in ("create table t(x)", "insert into t values ('kept')"):
                r = client.post("/v1/tenants/acme/query", json={"sql": sql}, headers=bearer(token))
                assert r.status_code == 200
        thread.start()
        time.sleep(0.3)
        started = time.monotonic()
        assert server.terminate() == 0
        stopped_in = time.monotonic() - started
        thread.join(10)
    finally:
        server.kill9()
    assert stopped_in < 5
    (answer,) = answers  # the statement running at SIGTERM got its answer, not a reset
    assert isinstance(answer, httpx.Response), answer
    assert answer.status_code == 504
    assert ADMIN_KEY not in server.log()  # a configured key is never printed
    # the same data dir again: the lock was released, and everything is where it was
    with run_server(tmp_path / "data") as server, server.client() as client:
        r = client.post("/v1/tenants/acme/query", json={"sql": "select x from t"}, headers=bearer(token))
        assert r.status_code == 200, r.text
        assert r.json()["rows"] == [["kept"]]
        r = client.post("/v1/tenants/acme/query", json={"sql": "delete from t"}, headers=bearer(ro))
        assert r.status_code == 403
        assert client.get("/v1/admin/tenants/acme").json()["state"] == "active"


def test_the_admin_key_is_generated_once_printed_saved_0600_and_overridable(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = start_server(data, env={"SQLFLEET_ADMIN_KEY": ""})
    try:
        key_file = data / "admin.key"
        key = key_file.read_text().strip()
        assert key and key != ADMIN_KEY
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert stat.S_IMODE((data / "signing-key.pem").stat().st_mode) == 0o600
        assert f"export SQLFLEET_ADMIN_KEY={key}" in server.log()
        _assert_admin(server.url, key, ok=True)
        _assert_admin(server.url, ADMIN_KEY, ok=False)
    finally:
        assert server.terminate() == 0
    assert keys.admin_key(None, data) == (key, False)  # a restart reuses it, without printing it
    with run_server(data, env={"SQLFLEET_ADMIN_KEY": "operator-chosen"}) as chosen:
        _assert_admin(chosen.url, "operator-chosen", ok=True)
        _assert_admin(chosen.url, key, ok=False)
    assert key_file.read_text().strip() == key  # the override never rewrites the file


def _assert_admin(url: str, key: str, ok: bool) -> None:
    r = httpx.get(f"{url}/v1/admin/tenants", headers=bearer(key), timeout=10)
    assert r.status_code == (200 if ok else 401), r.text


def test_an_empty_admin_key_file_is_a_clear_startup_error(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "admin.key").write_text("\n")
    cmd = [sys.executable, "-m", "ops", "serve", "--port", str(free_port()), "--data-dir", str(data)]
    result = subprocess.run(cmd, capture_output=True, env=_env(), timeout=60)
    assert result.returncode != 0
    assert "admin.key" in result.stderr.decode() and "empty" in result.stderr.decode()
    assert "Traceback" not in result.stderr.decode()
