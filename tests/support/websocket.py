"""Hrana over WebSocket in tests: the real app behind the real uvicorn (its WebSocket stack, size
limits and close handshakes) in this process, so a test can look at the server's stream
registry too; and a raw Hrana client over the `websockets` library."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Subprotocol

from ops.process import free_port
from ops.server import Server, uvicorn_config
from ops.settings import Settings
from tests.support.app import ADMIN_KEY, AdminCalls
from tests.support.waiting import wait_until


@dataclass
class Live(AdminCalls):
    """A running server: its parts (`server`), its base URLs, an admin HTTP client."""

    server: Server
    url: str
    client: httpx.Client
    runner: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        """Stop serving, as on SIGTERM (uvicorn closes open WebSockets with 1012). Idempotent."""
        self.runner.should_exit = True
        self.thread.join(30)

    @property
    def ws_url(self) -> str:
        return "ws" + self.url.removeprefix("http")

    def streams_open(self) -> int:
        return len(self.server.context.streams)


@contextlib.contextmanager
def live_server(data_dir: Path, **overrides: Any) -> Iterator[Live]:
    """The app over uvicorn on a free loopback port, in a thread of this process, for the block."""
    port = free_port()
    settings = Settings.load(environ={}, data_dir=data_dir, admin_key=ADMIN_KEY, port=port, **overrides)
    server = Server.build(settings)
    runner = uvicorn.Server(uvicorn_config(settings, server.app))
    thread = threading.Thread(target=runner.run, name="test-uvicorn", daemon=True)
    try:
        thread.start()
        wait_until(lambda: runner.started or not thread.is_alive(), timeout=30)
        assert runner.started, "uvicorn did not start"
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, timeout=30) as client:
            yield Live(server, url, client, runner, thread)
    finally:
        runner.should_exit = True
        thread.join(30)
        server.close()


class HranaSocket:
    """A raw Hrana client: JSON messages in text frames (protobuf ones are bytes, sent as given)."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self._next_id = 0

    @property
    def subprotocol(self) -> str | None:
        return self.conn.subprotocol

    def send(self, msg: dict[str, Any] | str | bytes) -> None:
        self.conn.send(msg if isinstance(msg, str | bytes) else json.dumps(msg))

    def recv(self, timeout: float = 30) -> dict[str, Any]:
        data = self.conn.recv(timeout)
        msg: dict[str, Any] = json.loads(data)
        return msg

    def hello(self, jwt: str | None) -> dict[str, Any]:
        self.send({"type": "hello", "jwt": jwt})
        return self.recv()

    def request(self, request: dict[str, Any]) -> int:
        """Send `request`; its request id."""
        self._next_id += 1
        self.send({"type": "request", "request_id": self._next_id, "request": request})
        return self._next_id

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send `request` and wait for its answer (answers to other requests are not expected)."""
        rid = self.request(request)
        msg = self.recv()
        assert msg.get("request_id") == rid, msg
        return msg

    def closed_with(self, timeout: float = 30) -> tuple[int | None, str | None]:
        """Read until the server closes the connection: its close code and reason."""
        with contextlib.suppress(Exception):
            while True:
                self.conn.recv(timeout)
        frame = self.conn.protocol.close_rcvd
        return (frame.code, frame.reason) if frame is not None else (None, None)


@contextlib.contextmanager
def hrana_socket(url: str, subprotocols: list[str] | None = None, **kwargs: Any) -> Iterator[HranaSocket]:
    """A connection to `url` offering `subprotocols` (["hrana3"] by default; [] offers none)."""
    offered = ["hrana3"] if subprotocols is None else subprotocols
    names = [Subprotocol(name) for name in offered] or None
    with connect(url, subprotocols=names, compression=None, proxy=None, **kwargs) as conn:
        yield HranaSocket(conn)


def execute(stream_id: int, sql: str, args: list[Any] | None = None) -> dict[str, Any]:
    stmt: dict[str, Any] = {"sql": sql}
    if args is not None:
        stmt["args"] = args
    return {"type": "execute", "stream_id": stream_id, "stmt": stmt}


def integer(value: int) -> dict[str, Any]:
    return {"type": "integer", "value": str(value)}
