"""Nothing that can run long runs on the event loop: one tenant's heavy single-step statement
(the issue's instr, 14.9 s on the loop before) never delays another tenant's `SELECT 1`."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.http_contract import checking
from tests.support.server import ServerProcess, run_server

INSTR = "SELECT instr(printf('%.*c',1600000,'a'), printf('%.*c',800000,'a')||'b')"
# a wildcard search at its worst within the pattern limit (max_like_pattern_length, 100): ~0.4 s
# inside one step of SQLite's own LIKE, in a worker thread, never on the event loop
A, B = "printf('%.*c',48,'a')", "printf('%.*c',48,'b')"
LIKE = f"SELECT printf('%.*c',8000000,'a') LIKE '%' || {A} || '_' || {B} || '%'"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with run_server(tmp_path_factory.mktemp("loop") / "data", "--statement-timeout", "2") as running:
        with running.client() as admin:
            for tenant in ("attacker", "victim"):
                assert admin.post("/v1/admin/tenants", json={"id": tenant}).status_code == 201
        yield running


def _attack(server: ServerProcess, results: list[httpx.Response], stop: threading.Event) -> None:
    with server.client(timeout=60) as client:
        while not stop.is_set():
            for sql in (INSTR, LIKE, INSTR):
                results.append(client.post("/v1/tenants/attacker/query", json={"sql": sql}))


def test_a_heavy_statement_never_holds_the_loop(server: ServerProcess) -> None:
    with server.client() as client:
        checking(client)
        for _ in range(3):  # the attacker's tenant open and idle, as in the issue
            assert client.post("/v1/tenants/attacker/query", json={"sql": "SELECT 1"}).status_code == 200
        attacks: list[httpx.Response] = []
        stop = threading.Event()
        thread = threading.Thread(target=_attack, args=(server, attacks, stop))
        thread.start()
        try:
            waits = []
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline:
                started = time.monotonic()
                r = client.post("/v1/tenants/victim/query", json={"sql": "SELECT 1"})
                waits.append(time.monotonic() - started)
                assert r.json()["rows"] == [[1]]
                time.sleep(0.05)
        finally:
            stop.set()
            thread.join(60)
    assert len(attacks) >= 3, "the attack did not run"
    assert {r.status_code for r in attacks} <= {200, 504}
    assert max(waits) < 1.0, f"the victim waited {max(waits):.2f} s"
