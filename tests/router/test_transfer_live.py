"""Export against a real server: under concurrent writes, and with clients that go away or stop
reading (router/transfer_api.py)."""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from tests.support.server import ServerProcess, run_server
from tests.support.waiting import wait_until

FILLER_ROWS = 400  # of 50 KB each: a 20 MB tenant, hundreds of 16-page export steps


def _make_big(client: httpx.Client, tenant: str) -> None:
    assert client.post("/v1/admin/tenants", json={"id": tenant}).status_code == 201
    statements = [
        {"sql": "CREATE TABLE filler(b BLOB)"},
        {"sql": "CREATE TABLE log(k INTEGER PRIMARY KEY)"},
        {"sql": "CREATE TABLE counter(n INTEGER)"},
        {"sql": "INSERT INTO counter VALUES (0)"},
    ]
    assert client.post(f"/v1/tenants/{tenant}/batch", json={"statements": statements}).status_code == 200
    for _ in range(FILLER_ROWS // 100):
        fill = [{"sql": "INSERT INTO filler VALUES (randomblob(50000))"}] * 100
        assert client.post(f"/v1/tenants/{tenant}/batch", json={"statements": fill}).status_code == 200


def test_export_under_concurrent_writes_is_consistent_at_one_commit(tmp_path: Path) -> None:
    env = {"SQLFLEET_EXPORT_STEP_PAGES": "16"}
    with run_server(tmp_path / "data", env=env) as server, server.client() as client:
        _make_big(client, "busy")
        stop = threading.Event()
        done: list[int] = []
        latencies: list[float] = []

        def writer() -> None:
            with server.client() as own:
                k = 0
                while not stop.is_set():
                    k += 1
                    step = [
                        {"sql": "INSERT INTO log VALUES (?)", "params": [k]},
                        {"sql": "UPDATE counter SET n = ?", "params": [k]},
                    ]
                    started = time.perf_counter()
                    r = own.post("/v1/tenants/busy/batch", json={"statements": step})
                    latencies.append(time.perf_counter() - started)
                    assert r.status_code == 200, r.text
                    done.append(k)

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            wait_until(lambda: len(done) >= 5, 30)
            before = len(done)
            r = client.get("/v1/tenants/busy/export")
            after = len(done)
        finally:
            stop.set()
            thread.join(30)
        assert r.status_code == 200, r.text
        path = tmp_path / "busy.db"
        path.write_bytes(r.content)
        with sqlite3.connect(path) as db:
            (n,) = db.execute("SELECT n FROM counter").fetchone()
            count, top = db.execute("SELECT count(*), coalesce(max(k), 0) FROM log").fetchone()
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        db.close()
        assert count == top == n  # every commit before the copy's moment, none half, none after
        # writers went on while the export copied (the lock is let go between steps)
        assert before <= n <= after
        assert after - before >= 3, (before, after)
        assert max(latencies) < 5.0  # generous on a busy machine: a step is milliseconds


def test_export_slot_and_file_go_when_the_client_disconnects_or_stalls(tmp_path: Path) -> None:
    # the idle timeout cuts off an export whose client takes nothing for that long: 5 s, so the
    # first check below comes well within it on a busy machine
    env = {"SQLFLEET_MAX_TRANSFERS": "1", "SQLFLEET_TRANSFER_IDLE_TIMEOUT": "5"}
    with run_server(tmp_path / "data", env=env) as server, server.client() as client:
        _make_big(client, "big")
        transfers = server.data_dir / "system" / "transfers"
        # read one piece, then hang up
        with _stalled_export(server):
            busy = client.get("/v1/tenants/big/export")
            assert busy.status_code == 429 and busy.json()["error"]["code"] == "transfers_busy"
        wait_until(lambda: client.get("/v1/tenants/big/dump").status_code == 200, 30)
        dumped = client.get("/v1/tenants/big/dump")  # streamed without a Content-Length, whole
        assert dumped.text.endswith("COMMIT;\n") and dumped.text.count("INSERT INTO") == FILLER_ROWS + 1
        # start one and stop reading (without hanging up): cut off after transfer_idle_timeout
        with _stalled_export(server):
            wait_until(lambda: _slot_free(client), 60)
        assert not transfers.exists() or not any(transfers.iterdir())


@contextlib.contextmanager
def _stalled_export(server: ServerProcess) -> Iterator[None]:
    """An export of `big` whose client reads its first bytes and then nothing while the block
    runs; a raw socket with a 64 KiB receive buffer (httpx's client stopped reading only in
    name: the server sent a whole 20 MB export within 0.1 s and freed its slot)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.connect(_address(server.url))
        sock.sendall(
            b"GET /v1/tenants/big/export HTTP/1.1\r\nHost: sqlfleet\r\n"
            + f"Authorization: Bearer {server.admin_key}\r\n\r\n".encode()
        )
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        yield


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def test_the_slot_is_free_once_the_client_has_the_whole_body(tmp_path: Path) -> None:
    # session 6 (a CI run): the slot went back only after the last byte was sent, so a client
    # that started its next transfer at once could get 429 `transfers_busy` with nothing running
    with (
        run_server(tmp_path / "data", env={"SQLFLEET_MAX_TRANSFERS": "1"}) as server,
        server.client() as client,
    ):
        assert client.post("/v1/admin/tenants", json={"id": "small"}).status_code == 201
        r = client.post("/v1/tenants/small/query", json={"sql": "CREATE TABLE t(x)"})
        assert r.status_code == 200, r.text
        for n in range(30):
            for path in ("/v1/tenants/small/dump", "/v1/tenants/small/export"):
                r = client.get(path)
                assert r.status_code == 200, (n, path, r.text)


def _slot_free(client: httpx.Client) -> bool:
    r = client.get("/v1/tenants/big/export")
    return r.status_code == 200


def _slow(data: bytes, pause: float, stall_at: int | None = None, stall: float = 0.0) -> Iterator[bytes]:
    for i, start in enumerate(range(0, len(data), 4096)):
        time.sleep(stall if i == stall_at else pause)
        yield data[start : start + 4096]


def test_import_upload_is_timed_per_piece_not_by_body_timeout(tmp_path: Path) -> None:
    env = {"SQLFLEET_BODY_TIMEOUT": "1", "SQLFLEET_TRANSFER_IDLE_TIMEOUT": "1.5"}
    source = tmp_path / "src.db"
    with sqlite3.connect(source) as db:
        db.execute("CREATE TABLE t(x)")
        db.execute("INSERT INTO t VALUES (zeroblob(20000))")
    db.close()
    data = source.read_bytes()
    with run_server(tmp_path / "data", env=env) as server, server.client() as client:
        # ~2.5 s in all, longer than body_timeout, but no piece late
        r = client.put("/v1/admin/tenants/slow/import", content=_slow(data, 0.4))
        assert r.status_code == 201, r.text
        # one piece 4 s late: cut off after transfer_idle_timeout, nothing made
        try:
            r = client.put(
                "/v1/admin/tenants/stalled/import", content=_slow(data, 0.0, stall_at=2, stall=4.0)
            )
            assert r.status_code == 408, r.text
        except httpx.TransportError:
            pass  # the server answered and closed while the client was still sending
        assert client.get("/v1/admin/tenants/stalled").status_code == 404
        transfers = server.data_dir / "system" / "transfers"
        assert not any(transfers.iterdir())


def test_head_of_an_export_gives_the_headers_only(tmp_path: Path) -> None:
    with run_server(tmp_path / "data") as server, server.client() as client:
        assert client.post("/v1/admin/tenants", json={"id": "h"}).status_code == 201
        r = client.head("/v1/tenants/h/export")
        assert r.status_code == 200 and int(r.headers["content-length"]) > 0 and r.content == b""
        assert client.get("/v1/tenants/h/export").status_code == 200  # the slot came back
        assert "Traceback" not in server.log()
