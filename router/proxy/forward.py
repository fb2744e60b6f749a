"""Forwarding one HTTP request to the node that owns its tenant (issue 16, "one URL").

The request goes out over a shared keep-alive pool (aiohttp) with the slot and fencing token the
proxy believes in (`x-sqlfleet-slot`); the owner answers 421 when it is not that owner any more.
A body up to `replay_bytes` is held so the request can be sent again after a 421 or a connection
that never opened (Unreachable: nothing was sent); a larger one (an import) is streamed through
and cannot be: the client gets 503 with Retry-After instead. Once a byte may have left, a failure
is Lost: the owner may have received the request and applied it, so only a GET or HEAD is sent
again. The response streams back as it arrives (change feeds, exports), and stops
when the client goes away. A relayed change feed (`text/event-stream`) always ends whole: only
complete events are passed on, and an owner that breaks off (its connection lost, silent past
the read timeout, or its slot gone and no `end` of its own within FEED_MOVE_GRACE) gets the
client an `end` event saying why, then a clean end of the body; an export or dump broken off is
cut short instead (a truncated body: the client sees it did not get the whole file).
An owner is waited for at most `answer_timeout` for its answer (transfers, which stream for
longer, only for `read_timeout` of silence), and no longer once the routing table shows it lost
its hold on the slot (its lease ran out: a paused or dead node): the request's fate is then
unknown (Lost). A pooled connection the owner closed before the request went out on it (a dead
or restarted owner) is never used (_FreshConnector): the request goes out on a new connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import inspect
import re
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from multidict import CIMultiDict
from starlette.types import Message, Receive, Scope, Send
from yarl import URL

from router.changes_api import end_event
from router.proxy.placement import SLOT_HEADER, Located

# Seconds an idle pooled connection is kept: below the owner's (uvicorn's default 5 s), so the
# owner never closes a connection just as a request goes out on it (that request's fate would
# be unknown, and a write could not be retried).
KEEPALIVE_SECONDS = 3.0
# Seconds between two looks at the routing table while an owner is waited for.
WATCH_SECONDS = 0.2
FIRST = asyncio.FIRST_COMPLETED
# Paths whose answers stream for longer than a request may run (transfer_timeout): bounded by
# the owner's silence (read_timeout) only.
TRANSFERS = re.compile(r"/(export|dump|import|changes)$")
# Seconds a relayed change feed's owner has, after the routing table shows its slot gone, to end
# the feed itself (`end` tenant_moved: it asks every ADMIT_SECONDS), as a relayed WebSocket's
# (router.proxy.websocket.MOVE_GRACE); then it is taken for lost.
FEED_MOVE_GRACE = 3.0
EVENT_STREAM = "text/event-stream"

# RFC 9110 §7.6.1: connection-specific fields a proxy must not pass on (plus `host`, set per hop
# by the HTTP client unless given: we pass the client's, so a `{tenant}.BASE_DOMAIN` Host still routes).
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        SLOT_HEADER.encode(),
    }
)
# An owner's response fields the proxy's own server sets again on the way out (uvicorn: date,
# server; the access log: x-request-id): passed on, they would come twice.
NOT_RELAYED = HOP_BY_HOP | {b"date", b"server", b"x-request-id"}


@dataclass(frozen=True)
class ProxyConfig:
    """`read_timeout` (s): longest silence from an owner mid-response (above the request time
    bound and twice the change feed's heartbeat); `connect_timeout` (s); `replay_bytes`: bodies
    up to this size are held for one retry; `max_connections`: the keep-alive pool's bound;
    `answer_timeout` (s): longest wait for the answer to a request that is no transfer (the
    request time bound plus slack), also the longest a relayed WebSocket's owner may stay
    silent (keepalive pings unanswered)."""

    read_timeout: float
    connect_timeout: float
    replay_bytes: int
    max_connections: int
    answer_timeout: float


class Body:
    """A request body read from the client once: `held` when it fit in the replay bound
    (it can be sent any number of times), else the part read so far plus the rest of `receive`."""

    def __init__(self, head: bytes, rest: Receive | None) -> None:
        self.held = head if rest is None else None
        self._head, self._rest = head, rest

    @classmethod
    async def read(cls, receive: Receive, replay_bytes: int) -> Body:
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            parts.append(chunk)
            size += len(chunk)
            if not message.get("more_body", False):
                return cls(b"".join(parts), None)
            if size > replay_bytes:
                return cls(b"".join(parts), receive)

    async def stream(self) -> AsyncIterator[bytes]:
        """The whole body, once (a streamed body cannot be sent twice)."""
        head, rest, self._rest = self._head, self._rest, None
        yield head
        while rest is not None:
            message = await rest()
            if message["type"] == "http.disconnect":
                raise ClientGone
            yield message.get("body", b"")
            if not message.get("more_body", False):
                return

    def replay(self) -> Receive:
        """An ASGI `receive` giving the body again, for serving the request here after all:
        all of it when held, else the part read so far and then the rest from the client."""
        messages: list[Message] = [
            {"type": "http.request", "body": self._head, "more_body": self.held is None}
        ]
        rest = self._rest

        async def receive() -> Message:
            if messages:
                return messages.pop()
            return await rest() if rest is not None else {"type": "http.disconnect"}

        return receive


class ClientGone(Exception):
    """The client disconnected before its request was read whole."""


class Forwarder:
    """Sends requests to owners over one keep-alive pool (aiohttp: its C HTTP parser costs ~90 us
    of CPU per forwarded request where httpx's async client took ~1,000 us, measured here). Event
    loop only; the pool is made on first use, in the server's loop; `aclose` at shutdown."""

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            c = self.config
            self._session = aiohttp.ClientSession(
                connector=CONNECTOR(
                    limit=c.max_connections, ttl_dns_cache=300, keepalive_timeout=KEEPALIVE_SECONDS
                ),
                timeout=aiohttp.ClientTimeout(sock_connect=c.connect_timeout, sock_read=c.read_timeout),
                auto_decompress=False,  # bytes pass through as the owner sent them
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
                trust_env=False,
            )
            # aiohttp sends a PUT or DELETE again on its own when the connection drops: never, here
            # (one may have been applied; Lost says so). No public option: its own test client
            # (aiohttp.test_utils) turns it off the same way.
            self._session._retry_connection = False
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def get_json(self, url: str, headers: dict[str, str]) -> Any:
        """GET `url`'s JSON answer (a node's admin route), waited for `answer_timeout` at most.
        Raises Unreachable, also for an error status; its message names the node by its
        address, never the HTTP library's text."""
        node = f"the node at {URL(url).origin()}"
        try:
            async with asyncio.timeout(self.config.answer_timeout):
                async with self._client().get(url, headers=headers, allow_redirects=False) as response:
                    if response.status != 200:
                        raise Unreachable(f"{node} answered {response.status}")
                    return await response.json()
        except (aiohttp.ClientError, ValueError) as exc:
            raise Unreachable(f"{node} {_failure(exc, self.config)}") from exc
        except TimeoutError as exc:  # the bound above
            raise Unreachable(
                f"{node} {_failure(NoAnswer(self.config.answer_timeout), self.config)}"
            ) from exc

    async def open(
        self, scope: Scope, body: Body, where: Located, owner_lost: Callable[[], bool] = lambda: False
    ) -> aiohttp.ClientResponse:
        """The owner's response, headers read and body still to come (`relay` it, or release
        it). Raises Unreachable when no connection to the owner opened (nothing was sent), Lost
        when one did and no answer came (the owner may have acted on the request) within the
        bound or before `owner_lost()` (polled) said the owner lost its slot, ClientGone
        when the client left while its body was being sent on."""
        assert where.url is not None
        target = where.url.rstrip("/") + target_path(scope)
        headers = CIMultiDict(
            (k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"] if k not in HOP_BY_HOP
        )
        headers[SLOT_HEADER] = f"{where.slot}:{where.token}"
        headers["x-forwarded-for"] = _client_host(scope)
        request_id = scope.get("state", {}).get("request_id")
        if isinstance(request_id, str):  # one id for the request in both nodes' access logs
            headers["x-request-id"] = request_id
        transfer = body.held is None or TRANSFERS.search(scope["path"]) is not None
        bound = None if transfer else self.config.answer_timeout
        data = body.held if body.held is not None else body.stream()
        request = asyncio.ensure_future(
            self._client().request(
                scope["method"], URL(target, encoded=True), headers=headers, data=data, allow_redirects=False
            )
        )
        try:
            return await _answer(request, owner_lost, bound)
        except NOT_SENT as exc:
            raise Unreachable(_failure(exc, self.config)) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            if isinstance(exc.__cause__ or exc.__context__, ClientGone):
                raise ClientGone from exc
            raise Lost(_failure(exc, self.config)) from exc

    async def relay(
        self,
        response: aiohttp.ClientResponse,
        receive: Receive,
        send: Send,
        owner_lost: Callable[[], bool] = lambda: False,
    ) -> None:
        """Send `response` to the client: whole when its length is known and small (most
        answers: one body message), else streamed as it arrives, stopping early (and closing
        it) when the client goes away (a change feed, an export). Raises Lost when the owner
        stops mid-response, or loses its slot (`owner_lost()`, polled) while it streams (the
        client's answer is then cut short); never for a change feed, which ends with an `end`
        event instead."""
        try:
            headers = [(k.lower(), v) for k, v in response.raw_headers if k.lower() not in NOT_RELAYED]
            start = {"type": "http.response.start", "status": response.status, "headers": headers}
            length = response.content_length
            if length is not None and length <= self.config.replay_bytes:
                body = await response.read()
                await send(start)
                await send({"type": "http.response.body", "body": body, "more_body": False})
                return
            await send(start)
            await self._stream(response, receive, send, owner_lost)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Lost(_failure(exc, self.config)) from exc
        finally:
            response.release()

    async def _stream(
        self, response: aiohttp.ClientResponse, receive: Receive, send: Send, owner_lost: Callable[[], bool]
    ) -> None:
        """Pass the body on as it arrives; a client that goes away ends it at once, not at the
        owner's next piece (an idle change feed sends one per heartbeat): the caller's release
        then closes the connection, and the owner's stream with it. A change feed is passed on
        in whole events, and ends with an `end` event of ours when the owner breaks it off."""
        feed = response.content_type == EVENT_STREAM
        gone = asyncio.ensure_future(_disconnected(receive))
        pieces = response.content.iter_any().__aiter__()
        held = b""  # a feed's event begun, not yet whole
        lost_since: float | None = None
        try:
            while True:
                piece = asyncio.ensure_future(pieces.__anext__())
                while not (await asyncio.wait((piece, gone), timeout=WATCH_SECONDS, return_when=FIRST))[0]:
                    if owner_lost():
                        lost_since = lost_since or time.monotonic()
                        if not feed or time.monotonic() - lost_since >= FEED_MOVE_GRACE:
                            piece.cancel()
                            raise OwnerLost
                if not piece.done():
                    piece.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await piece
                    return
                try:
                    chunk = piece.result()
                except StopAsyncIteration:
                    break
                if feed:  # events end with a blank line (our owner's: "\n\n")
                    whole = held + chunk
                    cut = whole.rfind(b"\n\n") + 2 if b"\n\n" in whole else 0
                    chunk, held = whole[:cut], whole[cut:]
                    if not chunk:
                        continue
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except (aiohttp.ClientError, TimeoutError) as exc:
            if not feed:
                raise
            last = end_event(_feed_broken(exc, self.config))
            await send({"type": "http.response.body", "body": last, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            gone.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await gone


class OwnerLost(TimeoutError):
    """The routing table shows the owner lost its slot (its lease ran out) while it was waited for."""


class NoAnswer(TimeoutError):
    """The owner did not answer within the bound."""

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.seconds = seconds


async def _answer(
    request: asyncio.Future[aiohttp.ClientResponse], owner_lost: Callable[[], bool], bound: float | None
) -> aiohttp.ClientResponse:
    """`request`'s response; raises OwnerLost or NoAnswer (having cancelled it) when the owner
    lost its slot, or did not answer within `bound` seconds (None: no bound but the read's)."""
    deadline = None if bound is None else time.monotonic() + bound
    try:
        while True:
            left = WATCH_SECONDS if deadline is None else min(WATCH_SECONDS, deadline - time.monotonic())
            done, _ = await asyncio.wait((request,), timeout=max(left, 0.0))
            if done:
                return request.result()
            if owner_lost():
                raise OwnerLost
            if deadline is not None and time.monotonic() >= deadline:
                assert bound is not None
                raise NoAnswer(bound)
    finally:
        if not request.done():
            request.cancel()
            with contextlib.suppress(BaseException):
                (await request).release()


class _FreshConnector(aiohttp.TCPConnector):
    """A keep-alive pool that never sends on a connection the owner already closed (a node that
    died or restarted): before a pooled connection is used, its socket is peeked, and one with
    the owner's end-of-stream (or a reset) waiting is dropped for another or a new one. aiohttp
    notices that itself only once its event loop has read the socket, which a busy loop may not
    have done yet; no public hook sees the connection before the request is written, so this
    extends `_get` (private, tested in tests/router/test_proxy.py)."""

    async def _get(self, key: Any, traces: list[Any]) -> Any:
        while True:
            connection = await super()._get(key, traces)
            if connection is None or _open(connection.transport):
                return connection
            connection.close()


def _fits() -> bool:
    """Whether aiohttp's private `_get` is the one _FreshConnector extends (3.11+)."""
    get = aiohttp.TCPConnector._get
    return inspect.iscoroutinefunction(get) and list(inspect.signature(get).parameters) == [
        "self",
        "key",
        "traces",
    ]


# Another aiohttp: the plain pool (a connection its owner closed is then found out on use: Lost).
CONNECTOR: type[aiohttp.TCPConnector] = _FreshConnector if _fits() else aiohttp.TCPConnector


def _open(transport: asyncio.Transport | None) -> bool:
    """Whether the peer of `transport` has not closed its end (nor reset it). asyncio's socket
    wrapper refuses recv(): the peek goes through a duplicate of its descriptor (same socket)."""
    held = None if transport is None else transport.get_extra_info("socket")
    if held is None:
        return transport is not None
    try:
        with socket.fromfd(held.fileno(), held.family, held.type) as sock:
            return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except BlockingIOError:
        return True  # nothing waiting: open
    except OSError as exc:
        return exc.errno not in (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN, errno.EBADF)


class Unreachable(Exception):
    """No connection to the node opened: the request was provably not sent (safe to retry)."""


class Lost(Exception):
    """The request was (or may have been) sent, and no whole answer came: the node may have
    acted on it. Only a request without effects (GET, HEAD) may be sent again."""


# What aiohttp raises before a connection exists: refused, unresolvable, TLS failed, or the
# connect timeout (aiohttp.ConnectionTimeoutError; a read timeout is SocketTimeoutError).
NOT_SENT = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)


def _failure(exc: BaseException, config: ProxyConfig) -> str:
    """What went wrong, in our words (the library's text names hosts, ssl contexts, errnos)."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return f"did not accept a connection within {config.connect_timeout:g} s"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "could not be connected to (refused or unreachable)"
    if isinstance(exc, OwnerLost):
        return "lost its hold on the tenant's slot (it moved, or that node's lease ran out) before answering"
    if isinstance(exc, NoAnswer):
        return f"did not answer within {exc.seconds:g} s"
    if isinstance(exc, TimeoutError):
        return f"stopped answering for {config.read_timeout:g} s"
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError | aiohttp.ClientOSError):
        return "closed the connection before answering in full"
    if isinstance(exc, ValueError):
        return "answered something that is not JSON"
    return f"failed ({type(exc).__name__})"


def _feed_broken(exc: BaseException, config: ProxyConfig) -> str:
    """Why a relayed change feed ended (the reason of its `end` event): reconnect, through any node."""
    if isinstance(exc, OwnerLost):
        why = "does not hold the tenant's slot any more (it moved, or that node lost its cluster lease)"
    elif isinstance(exc, TimeoutError):
        why = f"sent nothing for {config.read_timeout:g} s"
    else:
        why = "closed the connection"
    return f"owner_unreachable: the node serving this tenant {why}: reconnect"


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def target_path(scope: Scope) -> str:
    """The request's path and query as the client sent them (percent-encoding kept)."""
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if raw else scope["path"]
    query = scope.get("query_string", b"")
    return f"{path}?{query.decode('latin-1')}" if query else path


def _client_host(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"
