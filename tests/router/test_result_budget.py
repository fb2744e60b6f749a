"""Result bytes are bounded per request, across all its statements, and per server: counted as
the response's JSON holds them, refused before anything is sent (413; in-band for a cursor),
and the server's memory stays flat whatever one request asks for."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.support.app import ADMIN, InProcess, in_process
from tests.support.http_contract import checking
from tests.support.server import ServerProcess, run_server

BIG = "select printf('%.*c', 8000000, 'a')"  # under max_result_bytes (8 MiB) alone
MIB = 1 << 20


@pytest.fixture
def small(tmp_path: Path) -> Iterator[InProcess]:
    with in_process(tmp_path / "data", max_request_result_bytes=100_000) as app:
        checking(app.client)
        app.create("acme")
        yield app


def _batch(app: InProcess, *sqls: str) -> Any:
    body = {"statements": [{"sql": sql} for sql in sqls]}
    return app.client.post("/v1/tenants/acme/batch", json=body, headers=ADMIN)


def test_a_batch_whose_results_together_are_too_large_is_413(small: InProcess) -> None:
    one = "select printf('%.*c', 60000, 'a')"
    assert _batch(small, one).status_code == 200
    r = _batch(small, one, one)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "results_too_large"
    assert r.json()["error"]["index"] == 1


def test_the_json_size_is_what_counts(small: InProcess) -> None:
    # 20 kB of raw bytes each, but control characters take 6 bytes in JSON, base64 4 per 3
    assert small.query("acme", "select printf('%.*c', 20000, 'a')").status_code == 200
    r = small.query("acme", "select printf('%.*c', 20000, char(1))")
    assert (r.status_code, r.json()["error"]["code"]) == (413, "results_too_large")
    r = small.query("acme", "select zeroblob(20000), zeroblob(20000), zeroblob(20000)")
    assert r.status_code == 200
    r = small.query("acme", "select zeroblob(20000), zeroblob(20000), zeroblob(20000), zeroblob(20000)")
    assert (r.status_code, r.json()["error"]["code"]) == (413, "results_too_large")


def test_past_the_server_wide_bound_requests_are_503_with_retry_after(small: InProcess) -> None:
    memory = small.server.context.results
    assert memory.reserve(memory.limit - 1000)  # as if responses in flight held it all
    try:
        r = small.query("acme", "select printf('%.*c', 5000, 'a')")
        assert (r.status_code, r.json()["error"]["code"]) == (503, "server_busy")
        assert r.headers["retry-after"]
    finally:
        memory.release(memory.limit - 1000)
    assert small.query("acme", "select printf('%.*c', 5000, 'a')").status_code == 200
    assert memory.held == 0  # every response gave its bytes back once sent


def _pipeline(app: InProcess, requests: list[dict[str, Any]]) -> Any:
    r = app.client.post(
        "/v1/tenants/acme/v3/pipeline", json={"baton": None, "requests": requests}, headers=ADMIN
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_a_hrana_pipeline_shares_one_budget(small: InProcess) -> None:
    one = {"type": "execute", "stmt": {"sql": "select printf('%.*c', 60000, 'a')"}}
    quiet = {"type": "execute", "stmt": {"sql": "select printf('%.*c', 60000, 'a')", "want_rows": False}}
    results = _pipeline(small, [one, quiet, one, {"type": "execute", "stmt": {"sql": "select 1"}}])["results"]
    assert [r["type"] for r in results] == ["ok", "ok", "error", "ok"]
    assert results[2]["error"]["code"] == "RESPONSE_TOO_LARGE"


def test_a_cursor_streams_and_ends_a_step_over_budget_in_band(small: InProcess) -> None:
    steps = [{"stmt": {"sql": "select printf('%.*c', 60000, 'a')"}} for _ in range(3)]
    with small.client.stream(
        "POST", "/v1/tenants/acme/v3/cursor", json={"baton": None, "batch": {"steps": steps}}, headers=ADMIN
    ) as r:
        assert r.status_code == 200
        entries = [json.loads(line) for line in r.iter_lines() if line]
    assert entries[0]["baton"]
    kinds = [(e["type"], e.get("step")) for e in entries[1:]]
    assert kinds[:3] == [("step_begin", 0), ("row", None), ("step_end", None)]
    assert ("step_error", 1) in kinds and ("step_error", 2) in kinds
    errors = [e["error"]["code"] for e in entries[1:] if e["type"] == "step_error"]
    assert set(errors) == {"RESPONSE_TOO_LARGE"}


# -- the inputs, on a real server ---------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with run_server(tmp_path_factory.mktemp("budget") / "data", "--backups", "false") as running:
        with running.client() as admin:
            assert admin.post("/v1/admin/tenants", json={"id": "acme"}).status_code == 201
        yield running


class _PeakRss:
    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_a_hundred_8_mb_results_keep_the_server_flat(server: ServerProcess) -> None:
    """The issue: /batch of 100 x an 8 MB string returned 762 MB and grew the server by 1.5 GB
    (Hrana pipeline and cursor: up to +2.3 GB). Now each request stops at its budget."""
    steps = [{"stmt": {"sql": BIG}} for _ in range(100)]
    with server.client(timeout=120) as client:
        client.post("/v1/tenants/acme/query", json={"sql": BIG})  # warm: one result of 8 MB
        baseline = psutil.Process(server.proc.pid).memory_info().rss
        with _PeakRss(server.proc.pid) as rss:
            r = client.post("/v1/tenants/acme/batch", json={"statements": [{"sql": BIG}] * 100})
            assert (r.status_code, r.json()["error"]["code"]) == (413, "results_too_large")
            requests = [{"type": "execute", "stmt": {"sql": BIG}}] * 100
            r = client.post("/v1/tenants/acme/v3/pipeline", json={"baton": None, "requests": requests})
            results = r.json()["results"]
            assert results[0]["type"] == "ok" and len(r.content) < 9 * MIB
            assert {x["error"]["code"] for x in results[1:]} == {"RESPONSE_TOO_LARGE"}
            with client.stream(
                "POST", "/v1/tenants/acme/v3/cursor", json={"baton": None, "batch": {"steps": steps}}
            ) as cursor:
                body = b"".join(cursor.iter_bytes())
            assert len(body) < 9 * MIB and body.count(b'"step_error"') == 99
    growth = rss.peak - baseline
    assert growth < 128 * MIB, f"the server grew by {growth / MIB:.0f} MiB"
