"""Hrana over WebSocket as load for `sqlfleet bench`: the `drive` of ops.bench.loadgen's
`run_phase`, so phases, worker processes and results are the HTTP load's.

Each connection says hello with the token, opens one stream and then has one `execute` in
flight on it at a time (a keep-alive HTTP connection's one request at a time, the WebSocket
way): the phase's requests are the execute messages, pre-rendered. A response is counted as
status 200 (`response_ok`) or 500 (anything else); a connection that fails counts 0 for the
request it was on and connects again for the next. Framing is the `websockets` library's.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException
from websockets.typing import Subprotocol

from ops.bench.loadgen import Drive, Phase, PhaseResult, drive_links

SUBPROTOCOL = Subprotocol("hrana2")  # what @libsql/client speaks over WebSocket
_OK = b'{"type":"response_ok"'


def execute_messages(sql: str, args: Sequence[Sequence[int]]) -> list[bytes]:
    """One `execute` request message per argument list, on stream 1 (the one a connection opens)."""
    return [
        json.dumps(
            {
                "type": "request",
                "request_id": 1,  # one request in flight per connection: the id needs no variety
                "request": {
                    "type": "execute",
                    "stream_id": 1,
                    "stmt": {"sql": sql, "args": [{"type": "integer", "value": str(v)} for v in values]},
                },
            },
            separators=(",", ":"),
        ).encode()
        for values in args
    ]


def ws_drive(token: str, path: str = "/") -> Drive:
    """A `drive` that speaks Hrana over WebSocket at `path` of the server, authenticated by `token`."""
    return partial(_drive, token=token, path=path)


async def _open(url: str, token: str) -> ClientConnection:
    ws = await connect(url, subprotocols=[SUBPROTOCOL], compression=None, ping_interval=None, max_size=None)
    for msg in ({"type": "hello", "jwt": token}, _request({"type": "open_stream", "stream_id": 1})):
        await ws.send(json.dumps(msg))
        answer = await ws.recv(decode=False)
        if b'"hello_ok"' not in answer and not answer.startswith(_OK):
            await ws.close()
            raise ConnectionError(f"the server refused the connection: {answer[:200]!r}")
    return ws


def _request(request: dict[str, Any]) -> dict[str, Any]:
    return {"type": "request", "request_id": 1, "request": request}


class _Link:
    """One WebSocket connection with its stream open, made on first use and after a failure."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token
        self.ws: ClientConnection | None = None

    async def exchange(self, raw: bytes) -> tuple[int, bytes, float]:
        clock = time.perf_counter
        t0 = clock()
        answer = b""
        try:
            if self.ws is None:
                self.ws = await _open(self.url, self.token)
                t0 = clock()  # the handshake is not the request's
            await self.ws.send(raw, text=True)
            answer = await self.ws.recv(decode=False)
            status = 200 if answer.startswith(_OK) else 500
        except (OSError, WebSocketException):
            self.ws, status = None, 0
        return status, answer, clock() - t0

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()


async def _drive(
    url: str, phase: Phase, share: range, concurrency: int, *, token: str, path: str
) -> PhaseResult:
    ws_url = "ws" + url.removeprefix("http") + path
    return await drive_links(phase, share, concurrency, lambda: _Link(ws_url, token))
