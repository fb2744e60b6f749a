"""The WebSocket handshake: which Hrana version and encoding (the subprotocol, see
router.hrana.ws.versions), and whether the server takes one more connection.

A `Sec-WebSocket-Protocol` header naming no Hrana subprotocol gets HTTP 400 naming those that
are. Past `max_websockets` open connections the upgrade gets HTTP 503 with Retry-After.

Served at `/` (the tenant is the hello token's, or the Host's `{tenant}.BASE_DOMAIN`) and at
`/v1/tenants/{tenant}` with or without its trailing slash (a WebSocket URL is used as given:
there is no redirect to the other form).
"""

from __future__ import annotations

from functools import partial

from starlette.responses import PlainTextResponse, Response
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from router.context import ctx
from router.hrana import codec_json, codec_protobuf
from router.hrana.protocol import ClientMsg, ServerMsg
from router.hrana.ws.session import Codec, Session
from router.hrana.ws.versions import SUBPROTOCOLS, negotiate

UNSUPPORTED = "Only these WebSocket subprotocols are supported: " + " ".join(SUBPROTOCOLS)


async def hrana_websocket(websocket: WebSocket) -> None:
    c = ctx(websocket)
    chosen = negotiate(websocket.scope.get("subprotocols") or [])
    if chosen is None:
        await _deny(websocket, PlainTextResponse(UNSUPPORTED, 400))
        return
    if c.websockets >= c.config.max_websockets:
        busy = f"the server has {c.config.max_websockets} WebSocket connections open: retry shortly"
        await _deny(websocket, PlainTextResponse(busy, 503, headers={"Retry-After": "1"}))
        return
    version, binary = SUBPROTOCOLS[chosen.lower() or "hrana1"]
    limit = c.config.max_batch_statements
    if binary:
        codec = Codec(
            True, partial(_decode_protobuf, max_statements=limit), codec_protobuf.encode_ws_server_msg
        )
    else:
        codec = Codec(False, partial(codec_json.decode_ws_client_msg, max_statements=limit), _encode_json)
    c.websockets += 1
    try:
        await websocket.accept(subprotocol=chosen or None)
        await Session(c, websocket, codec, version).serve()
    finally:
        c.websockets -= 1


def _decode_protobuf(data: str | bytes, max_statements: int) -> ClientMsg:
    assert isinstance(data, bytes)  # the session passes binary frames only to a binary codec
    return codec_protobuf.decode_ws_client_msg(data, max_statements)


def _encode_json(msg: ServerMsg) -> str:
    return codec_json.encode_ws_server_msg(msg)


async def _deny(websocket: WebSocket, response: Response) -> None:
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(response)
    else:  # a server without the denial extension: a bare 403
        await websocket.close(1008)


ROUTES = [
    WebSocketRoute("/", hrana_websocket),
    WebSocketRoute("/v1/tenants/{tenant}", hrana_websocket),
    WebSocketRoute("/v1/tenants/{tenant}/", hrana_websocket),
]
