"""Relaying a Hrana WebSocket to the node that owns its tenant (issue 16, "one URL").

The tenant of a WebSocket is known at the handshake when the URL names it (`/v1/tenants/{t}`,
or a `{t}.BASE_DOMAIN` Host): the proxy then opens the owner's socket first, so the owner's own
handshake answer (a 400 for an unknown subprotocol, a 503 when busy) reaches the client as is.
At the root URL the tenant is the `sub` of the token in the client's first message (`hello`):
the proxy accepts, reads that message, and opens the owner's socket with the same subprotocol,
sending the hello on. Every frame then passes through unchanged, text as text and binary as
binary, until either side closes; the close code and reason pass through too. An owner that
stops answering (its keepalive pings unanswered for about `answer_timeout`), drops the
connection without a close frame, or loses its hold on the slot (the routing table says so: its
lease ran out) gets the client's socket closed with 1011 and a reason saying so. But a slot that
moves on while its owner lives (a drain, a join) is the owner's to close: its session answers
what is in flight and closes 1012 `tenant_moved` (router.hrana.ws.session), which passes through
as any close does; only an owner that has not closed MOVE_GRACE seconds after the routing table
showed the slot gone is taken for lost.

A handshake refused here (no owner, a 421, a fenced node: `deny`) gets an HTTP answer with a
Hrana error body through the ASGI `websocket.http.response` extension, never a bare 403; a
server without that extension gets the socket accepted and closed with a reason instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.types import Message, Receive, Scope, Send
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from router.hrana import codec_json, codec_protobuf
from router.hrana.protocol import Error, Hello
from router.hrana.ws.close import close_reason, error_reason, fitted
from router.hrana.ws.endpoint import UNSUPPORTED
from router.hrana.ws.versions import SUBPROTOCOLS, negotiate
from router.proxy.errors import Misdirected
from router.proxy.forward import HOP_BY_HOP, NOT_RELAYED, WATCH_SECONDS, Unreachable, target_path
from router.proxy.placement import SLOT_HEADER, UNPROVEN_HEADER, Located, jwt_subject
from tenants.errors import SqlfleetError

# Handshake fields the websockets client writes itself.
_OWN_HEADERS = HOP_BY_HOP | {
    b"host",
    b"sec-websocket-key",
    b"sec-websocket-version",
    b"sec-websocket-extensions",
    b"sec-websocket-protocol",
    b"content-length",
}


class Refused(Exception):
    """The owner answered the handshake 421: it does not serve the slot under the token named;
    `unproven`: its reason when that is because it cannot prove its lease (UNPROVEN_HEADER)."""

    def __init__(self, unproven: str | None) -> None:
        super().__init__(unproven)
        self.unproven = unproven


class Rejected(Exception):
    """The owner refused the handshake with an HTTP answer other than 421."""

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        super().__init__(status)
        self.status, self.headers, self.body = status, headers, body


# Close codes a peer never sends (RFC 6455 §7.4.1): what the websockets client reports when the
# owner's socket ended without a close frame (1006), or one without a code (1005).
_NOT_SENDABLE = frozenset({1005, 1006, 1015})
OWNER_SILENT = close_reason(
    "outcome_unknown",
    "the node serving this tenant stopped answering: the last request may have taken effect; reconnect",
)
# A live owner closes a moved tenant's socket within ADMIT_SECONDS (router.hrana.ws.moves), once what is
# in flight there is answered; one silent for this long after the routing table showed the slot
# gone is taken for lost (its lease ran out, or it did not answer).
MOVE_GRACE = 3.0
OWNER_LOST = close_reason(  # a close reason holds 123 bytes: the cause is not known, both are named
    "outcome_unknown",
    "the tenant's node lost its slot (moved, or lease ran out): last request may have taken effect; "
    "reconnect",
)


class WebSocketRelay:
    """`connect_timeout` (s) bounds the owner's handshake; `max_message_bytes` one frame;
    `answer_timeout` (s) about the longest the owner may leave keepalive pings unanswered."""

    def __init__(self, connect_timeout: float, max_message_bytes: int, answer_timeout: float = 40.0) -> None:
        self.connect_timeout = connect_timeout
        self.max_message_bytes = max_message_bytes
        self.answer_timeout = answer_timeout

    async def open(self, scope: Scope, where: Located, subprotocols: list[str]) -> ClientConnection:
        """The owner's socket. Raises Refused when it answered 421, Unreachable when it could not
        be reached (either way the caller reads the owner again), Rejected for its other refusals."""
        assert where.url is not None
        url = "ws" + where.url.removeprefix("http") + target_path(scope)
        headers = [
            (k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"] if k not in _OWN_HEADERS
        ]
        headers.append((SLOT_HEADER, f"{where.slot}:{where.token}"))
        try:
            return await connect(
                url,
                additional_headers=headers,
                subprotocols=[Subprotocol(s) for s in subprotocols if s] or None,
                open_timeout=self.connect_timeout,
                max_size=self.max_message_bytes,
                ping_interval=self.answer_timeout / 2,
                ping_timeout=self.answer_timeout / 2,
                compression=None,
                user_agent_header=None,
                proxy=None,
            )
        except InvalidStatus as exc:
            response = exc.response
            if response.status_code == Misdirected.status:
                raise Refused(response.headers.get(UNPROVEN_HEADER)) from None
            headers_out = [(k.lower().encode(), v.encode()) for k, v in response.headers.raw_items()]
            raise Rejected(response.status_code, headers_out, bytes(response.body or b"")) from None
        except TimeoutError:
            raise Unreachable(
                f"did not complete a WebSocket handshake within {self.connect_timeout:g} s"
            ) from None
        except OSError:
            raise Unreachable("could not be connected to (refused or unreachable)") from None
        except InvalidHandshake:
            raise Unreachable("answered the WebSocket handshake with something that is not one") from None

    async def pump(
        self,
        receive: Receive,
        send: Send,
        upstream: ClientConnection,
        hello: Message | None,
        owner_lost: Callable[[], bool] = lambda: False,
    ) -> None:
        """Frames both ways until one side closes, or `owner_lost()` (polled) says the owner lost
        its slot and the owner has not closed within MOVE_GRACE (the client's socket is then
        closed 1011); the client's is already accepted."""
        if hello is not None:
            await upstream.send(hello.get("bytes") or hello.get("text") or "")
        down = asyncio.ensure_future(_downstream(upstream, send))
        watch = asyncio.ensure_future(_watch(owner_lost))
        try:
            while not down.done() and not watch.done():
                message = await _first(receive(), down, watch)
                if message is None or message["type"] == "websocket.disconnect":
                    break
                with contextlib.suppress(ConnectionClosed):
                    await upstream.send(message.get("bytes") or message.get("text") or "")
            if watch.done() and not down.done():
                down.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                    await down
                await send({"type": "websocket.close", "code": 1011, "reason": OWNER_LOST})
        finally:
            watch.cancel()
            down.cancel()
            if watch.done():  # a lost owner may not answer a closing handshake
                upstream.transport.abort()
            else:
                await upstream.close()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await down

    async def deny(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        error: SqlfleetError,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        await deny(scope, receive, send, error, headers)

    async def deny_raw(self, scope: Scope, receive: Receive, send: Send, answer: Rejected) -> None:
        await deny_raw(scope, receive, send, answer)


async def deny(
    scope: Scope,
    receive: Receive,
    send: Send,
    error: SqlfleetError,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Refuse a WebSocket handshake (not yet accepted) with `error` as HTTP, in Hrana's error
    shape (every WebSocket here speaks Hrana), with Retry-After and the `extra` headers (`deny_raw`)."""
    body = codec_json.encode_error(Error.of(error))
    retry_after = str(error.detail.get("retry_after", 1)).encode()
    headers = [(b"content-type", b"application/json"), (b"retry-after", retry_after), *(extra or [])]
    closing = (1013 if error.status == 503 else 1008, error_reason(error))
    await deny_raw(scope, receive, send, Rejected(error.status, headers, body), closing)


async def deny_raw(
    scope: Scope,
    receive: Receive,
    send: Send,
    answer: Rejected,
    closing: tuple[int, str] | None = None,
) -> None:
    """Refuse a WebSocket handshake with the HTTP `answer`. A server without the denial
    extension would turn a close before accepting into a bare 403 (read as an auth failure):
    there the socket is accepted and closed with `closing` (code, reason), by default 1013 and
    the answer's status."""
    await receive()  # websocket.connect
    if "websocket.http.response" in scope.get("extensions", {}):
        headers = [(k, v) for k, v in answer.headers if k not in NOT_RELAYED and k != b"content-length"]
        headers.append((b"content-length", str(len(answer.body)).encode()))
        await send({"type": "websocket.http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": answer.body, "more_body": False})
        return
    code, reason = closing or (1013, close_reason("refused", f"the handshake was answered {answer.status}"))
    await send({"type": "websocket.accept", "subprotocol": None, "headers": []})
    await send({"type": "websocket.close", "code": code, "reason": reason})


async def accept_and_read_hello(scope: Scope, receive: Receive, send: Send) -> tuple[str, Message] | None:
    """At the root URL: accept with the subprotocol the server would pick, and return it with
    the client's first message (its hello). None when the client offered nothing we speak (it
    was refused) or left first."""
    chosen = negotiate(scope.get("subprotocols") or [])
    if chosen is None:  # as the Hrana endpoint answers it (router.hrana.ws.endpoint)
        body = UNSUPPORTED.encode()
        headers = [(b"content-type", b"text/plain; charset=utf-8")]
        closing = 1002, close_reason("PROTOCOL_ERROR", UNSUPPORTED)
        await deny_raw(scope, receive, send, Rejected(400, headers, body), closing)
        return None
    await receive()  # websocket.connect
    await send({"type": "websocket.accept", "subprotocol": chosen or None, "headers": []})
    message = await receive()
    if message["type"] != "websocket.receive":
        return None
    return chosen, message


def hello_subject(subprotocol: str, message: Message) -> str | None:
    """The unverified `sub` of the token in a client's first message, or None."""
    binary = SUBPROTOCOLS.get(subprotocol.lower() or "hrana1", (0, False))[1]
    try:
        if binary:
            msg = codec_protobuf.decode_ws_client_msg(message.get("bytes") or b"", 1)
            jwt = msg.jwt if isinstance(msg, Hello) else None
        else:
            decoded = json.loads(message.get("text") or "")
            jwt = decoded.get("jwt") if isinstance(decoded, dict) and decoded.get("type") == "hello" else None
    except (ValueError, SqlfleetError):
        return None
    return jwt_subject(jwt) if isinstance(jwt, str) else None


def replayed(hello: Message, receive: Receive, send: Send) -> tuple[Receive, Send]:
    """`receive`/`send` for serving an already accepted socket here: the app sees a connect and
    the hello again, and its own accept is swallowed."""
    pending: list[Message] = [hello, {"type": "websocket.connect"}]

    async def again() -> Message:
        return pending.pop() if pending else await receive()

    async def accepted_once(message: Message) -> None:
        if message["type"] != "websocket.accept":
            await send(message)

    return again, accepted_once


async def _downstream(upstream: ClientConnection, send: Send) -> None:
    try:
        async for data in upstream:
            key = "bytes" if isinstance(data, bytes) else "text"
            await send({"type": "websocket.send", key: data})
    except ConnectionClosed:
        pass
    code, reason = upstream.close_code or 1000, upstream.close_reason or ""
    if code == 1005:  # a close frame without a code: a normal end
        code = 1000
    elif code in _NOT_SENDABLE:  # no close frame: the owner went silent (pings) or away
        code, reason = 1011, OWNER_SILENT
    await send({"type": "websocket.close", "code": code, "reason": fitted(reason)})


async def _watch(owner_lost: Callable[[], bool]) -> None:
    """Returns MOVE_GRACE after `owner_lost()` (polled) is true: meanwhile frames go on both
    ways, so a live owner's own close (a moved tenant's) passes through first."""
    while not owner_lost():
        await asyncio.sleep(WATCH_SECONDS)
    await asyncio.sleep(MOVE_GRACE)


async def _first(message: Awaitable[Message], *ends: asyncio.Future[None]) -> Message | None:
    """The client's next message, or None once one of `ends` (the owner's side) ended first."""
    task = asyncio.ensure_future(message)
    waited: list[asyncio.Future[Any]] = [task, *ends]
    await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        return task.result()
    task.cancel()
    return None
