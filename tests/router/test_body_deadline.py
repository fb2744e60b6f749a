"""A request body must arrive within `body_timeout`: a body dribbled a byte at a time gets 408
and its connection is closed, on every route that reads a body (issue 10, finding 12). A real
server, since the connection handling is uvicorn's."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from tests.support.app import ADMIN, ADMIN_KEY
from tests.support.server import ServerProcess, run_server

BODY_TIMEOUT = 1.5
DRIP = 0.3  # seconds between the bytes of a slow body
BOUND = 12.0  # far above BODY_TIMEOUT on a busy machine; the old server never closed them


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("body-deadline") / "data"
    with run_server(data, env={"SQLFLEET_BODY_TIMEOUT": str(BODY_TIMEOUT)}) as running:
        with running.client() as http:
            assert http.post("/v1/admin/tenants", json={"id": "acme"}).status_code == 201
        yield running


class Slow:
    """A raw connection sending a request whose body comes one byte every DRIP seconds."""

    def __init__(self, server: ServerProcess, path: str, chunked: bool = False) -> None:
        url = urlsplit(server.url)
        self.sock = socket.create_connection((url.hostname or "127.0.0.1", url.port or 80), timeout=5)
        self.sock.setblocking(False)
        framing = "Transfer-Encoding: chunked" if chunked else "Content-Length: 1000"
        head = (
            f"POST {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {ADMIN_KEY}\r\n"
            f"Content-Type: application/json\r\n{framing}\r\n\r\n"
        )
        self.chunked = chunked
        self.sock.sendall(head.encode())
        self.answer = b""
        self.closed_at: float | None = None

    def drip(self) -> None:
        """One more byte of the body, and whatever the server sent meanwhile."""
        if self.closed_at is not None:
            return
        with contextlib.suppress(OSError):  # the server closed it: the read below sees the end
            self.sock.send(b"1\r\n{\r\n" if self.chunked else b"{")
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    self.closed_at = time.monotonic()
                    self.sock.close()
                    return
                self.answer += data
        except BlockingIOError:
            pass
        except OSError:  # reset after the answer
            self.closed_at = time.monotonic()
            self.sock.close()

    def status(self) -> int:
        return int(self.answer.split(b" ", 2)[1])

    def body(self) -> dict[str, object]:
        head, _, body = self.answer.partition(b"\r\n\r\n")
        assert b"transfer-encoding: chunked" not in head.lower(), head
        parsed: dict[str, object] = json.loads(body)
        return parsed

    def headers(self) -> dict[str, str]:
        head = self.answer.partition(b"\r\n\r\n")[0].decode()
        return {
            k.strip().lower(): v.strip()
            for k, _, v in (line.partition(":") for line in head.split("\r\n")[1:])
        }


def drip_until_closed(clients: list[Slow]) -> float:
    """Drip into every client until the server has closed them all; the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < BOUND:
        for client in clients:
            client.drip()
        if all(c.closed_at is not None for c in clients):
            return max(c.closed_at or 0 for c in clients) - started
        time.sleep(DRIP)
    for client in clients:
        client.sock.close()
    still = sum(c.closed_at is None for c in clients)
    raise AssertionError(f"{still} of {len(clients)} slow bodies still open after {BOUND} s")


def test_many_slow_bodies_get_408_and_their_connections_close(server: ServerProcess) -> None:
    paths = ["/v1/tenants/acme/query", "/v1/tenants/acme/batch", "/v1/admin/tenants", "/v1/admin/groups"]
    clients = [Slow(server, paths[i % len(paths)]) for i in range(40)]
    with server.client() as http:  # meanwhile everyone else is served
        assert http.post("/v1/tenants/acme/query", json={"sql": "select 1"}).status_code == 200
    took = drip_until_closed(clients)
    assert took < BOUND
    for client in clients:
        assert client.status() == 408, client.answer[:300]
        assert client.body() == {
            "error": {
                "code": "request_timeout",
                "message": f"the request body did not arrive within {BODY_TIMEOUT:g} s",
            }
        }
        assert client.headers()["connection"] == "close"


@pytest.mark.parametrize(
    "path", ["/v1/tenants/acme/v2/pipeline", "/v3/cursor", "/v1/tenants/acme/v1/execute"]
)
def test_a_slow_hrana_body_gets_408_in_the_protocols_shape(server: ServerProcess, path: str) -> None:
    for chunked in (False, True):
        client = Slow(server, path.replace("/v3/cursor", "/v1/tenants/acme/v3/cursor"), chunked)
        drip_until_closed([client])
        assert client.status() == 408, client.answer[:300]
        assert client.body()["code"] == "REQUEST_TIMEOUT"


def test_a_route_that_reads_no_body_closes_the_connection_instead_of_waiting(server: ServerProcess) -> None:
    client = Slow(server, "/v1/admin/tenants/acme/tokens/revoke")  # answers without the body
    took = drip_until_closed([client])
    assert client.status() == 200 and client.headers()["connection"] == "close"
    assert took < BOUND


def test_requests_in_time_keep_their_connection(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, headers=ADMIN) as http:
        for _ in range(3):
            r = http.post("/v1/tenants/acme/query", json={"sql": "select 1"})
            assert r.status_code == 200 and "connection" not in r.headers
        assert http.get("/healthz").status_code == 200
