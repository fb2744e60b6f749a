"""The durable-ack gate (`ack = replica`): one ASGI middleware for every protocol.

A response of a tenant route (REST query and batch, Hrana over HTTP v1/v2/v3 in JSON or
protobuf, Hrana over WebSocket, export, dump, import, the change feed, restore) is held until
every commit its tenant had when the response was formed is in the replica (backups.ack): its
own writes, and what it read (the output gate). It acts where the bytes leave, not in each route:
- HTTP: at `http.response.start` (a body sent whole was formed before it); a streamed body
  (more_body, e.g. a Hrana cursor or the change feed) again before each later piece.
- WebSocket: before each message sent (each Hrana response).
Only successful answers wait (status < 400): an error formed nothing to lose.
A refusal tells a read from a write by what the request's own statements did
(router.request_writes: each HTTP request is tracked here, each Hrana WebSocket message by its
session), not by whether its tenant's commits went on meanwhile: another request's write
committing while a read ran must not make the read look like a write.

The wait is bounded by the request's deadline (`request_timeout` from its arrival, at least
MIN_WAIT: a response that used up its time still gets one flush). Past it, or when a flush fails:
HTTP 503 `replica_unavailable` (Retry-After) instead of the response (for Hrana its Error shape);
a streamed body already begun is cut off; a WebSocket is closed (1011). The client must treat a
write answered so as unknown: it may have committed here and ship later, or be lost with the node.
The tenants are the route's `{tenant}`, for Hrana at the root what it resolved (HRANA_TENANT),
and what a route names in ACK_TENANTS: a tenant its body names (create), a restore's target.
"""

from __future__ import annotations

import logging
import time

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect

from backups.ack import Acks
from router.errors import render
from router.hrana import codec_json
from router.hrana.protocol import Error
from router.hrana.routes import HRANA_TENANT
from router.hrana.ws.close import error_reason
from router.request_writes import Tracked, current, tracking
from tenants.errors import ReplicaUnavailable

log = logging.getLogger(__name__)

MIN_WAIT = 1.0  # seconds a response may wait for its flush even past the request's deadline
WS_SHARE = 0.9  # of request_timeout: a WebSocket send itself gives up at request_timeout


# Scope key: the tenants (a tuple of ids) a route wrote that its path does not name, e.g. the
# tenant a create's body names, a restore's target: their responses wait as well.
ACK_TENANTS = "sqlfleet.ack_tenants"
# Scope key: set by a route of a tenant that commits nothing of the tenant's and shows none of its
# data (a token revocation): its response waits for what carries its change instead, on its own.
ACK_SKIP = "sqlfleet.ack_skip"


def tenants_of(scope: Scope) -> list[str]:
    """The tenants a request is for, once its route has run; empty: not a tenant's request,
    or one that does its own waiting (ACK_SKIP)."""
    if scope.get(ACK_SKIP):
        return []
    named = [scope.get(HRANA_TENANT), scope.get("path_params", {}).get("tenant"), *scope.get(ACK_TENANTS, ())]
    return list(dict.fromkeys(t for t in named if isinstance(t, str)))


class AckGate:
    """Holds each response of a tenant route until its tenant's commits are in the replica."""

    def __init__(self, app: ASGIApp, acks: Acks, timeout: float) -> None:
        self.app = app
        self.acks = acks
        self.timeout = timeout  # the request deadline (request_timeout)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self.app(scope, receive, self._websocket_sender(scope, send))
        else:
            await self.app(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        deadline = time.monotonic() + self.timeout
        since = self.acks.clock()  # not knowing what it wrote: commits after it may be its own
        tracked = Tracked()
        gated = False  # the response waits (a tenant's, status < 400)
        streaming = False  # a body piece said more_body: later pieces were formed later
        replaced = False  # the response was answered with 503 instead: drop what follows

        async def gate(message: Message) -> None:
            nonlocal gated, streaming, replaced
            kind = message["type"]
            if replaced:
                return
            if kind == "http.response.start":
                tenants = tenants_of(scope)
                gated = bool(tenants) and message["status"] < 400
                if gated:
                    try:
                        left = max(deadline - time.monotonic(), MIN_WAIT)
                        await self.acks.wait(tenants, left, since, tracked.wrote())
                    except ReplicaUnavailable as exc:
                        replaced = True
                        await _refusal(scope, exc)(scope, receive, send)
                        return
            elif kind == "http.response.body" and gated:
                tenants = tenants_of(scope)
                if streaming and message.get("body"):
                    try:
                        await self.acks.wait(tenants, self.timeout, since, tracked.wrote())
                    except ReplicaUnavailable as exc:
                        log.warning("tenant %s: streamed response cut off (%s)", tenants[0], exc.message)
                        raise  # the server aborts the response: the client sees it incomplete
                streaming = bool(message.get("more_body"))
            await send(message)

        with tracking(tracked):
            await self.app(scope, receive, gate)

    def _websocket_sender(self, scope: Scope, send: Send) -> Send:
        # for what the session does not track (router.hrana.ws.session tracks each message):
        # requests may be pipelined on a socket, so only what came before it opened is surely no write
        since = self.acks.clock()

        async def gate(message: Message) -> None:
            tenants = tenants_of(scope)
            if message["type"] == "websocket.send" and tenants:
                tracked = current()  # the message's, in the task sending its response
                wrote = tracked.wrote() if tracked is not None else None
                try:
                    await self.acks.wait(tenants, self.timeout * WS_SHARE, since, wrote)
                except ReplicaUnavailable as exc:
                    log.warning("tenant %s: websocket closed (%s)", tenants[0], exc.message)
                    reason = error_reason(exc)
                    await send({"type": "websocket.close", "code": 1011, "reason": reason})
                    raise WebSocketDisconnect(1011, reason) from exc
            await send(message)

        return gate


def _refusal(scope: Scope, exc: ReplicaUnavailable) -> Response:
    """The 503 sent instead of a response whose commits did not reach the replica: Hrana's
    Error shape on its routes, else the one JSON error shape."""
    if scope.get(HRANA_TENANT) is None:
        return render(exc)
    body = codec_json.encode_error(Error.of(exc))
    return Response(body, exc.status, {"Retry-After": "1"}, media_type=codec_json.MEDIA_TYPE)
