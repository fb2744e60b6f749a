"""Forwarding one HTTP request to the node that owns its tenant (issue 16, "one URL").

The request goes out over a shared keep-alive pool (aiohttp) with the slot and fencing token the
proxy believes in (`x-sqlfleet-slot`); the owner answers 421 when it is not that owner any more.
A body up to `replay_bytes` is held so the request can be sent again after a 421 or a failed
connection; a larger one (an import) is streamed through and cannot be: the client gets 503 with
Retry-After instead. The response streams back as it arrives (change feeds, exports), and stops
when the client goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from multidict import CIMultiDict
from starlette.types import Message, Receive, Scope, Send
from yarl import URL

from router.proxy.placement import SLOT_HEADER, Located

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


@dataclass(frozen=True)
class ProxyConfig:
    """`read_timeout` (s): longest silence from an owner mid-response (above the request time
    bound and twice the change feed's heartbeat); `connect_timeout` (s); `replay_bytes`: bodies
    up to this size are held for one retry; `max_connections`: the keep-alive pool's bound."""

    read_timeout: float
    connect_timeout: float
    replay_bytes: int
    max_connections: int


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
                connector=aiohttp.TCPConnector(limit=c.max_connections, ttl_dns_cache=300),
                timeout=aiohttp.ClientTimeout(sock_connect=c.connect_timeout, sock_read=c.read_timeout),
                auto_decompress=False,  # bytes pass through as the owner sent them
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
                trust_env=False,
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def get_json(self, url: str, headers: dict[str, str]) -> Any:
        """GET `url`'s JSON answer (a node's admin route). Raises Unreachable, also for an
        error status (with the answer's text)."""
        try:
            async with self._client().get(url, headers=headers, allow_redirects=False) as response:
                if response.status != 200:
                    raise Unreachable(f"{url} answered {response.status}: {(await response.text())[:200]}")
                return await response.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise Unreachable(str(exc) or type(exc).__name__) from exc

    async def open(self, scope: Scope, body: Body, where: Located) -> aiohttp.ClientResponse:
        """The owner's response, headers read and body still to come (`relay` it, or release
        it). Raises Unreachable when the owner cannot be reached or stops answering."""
        assert where.url is not None
        target = where.url.rstrip("/") + target_path(scope)
        headers = CIMultiDict(
            (k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"] if k not in HOP_BY_HOP
        )
        headers[SLOT_HEADER] = f"{where.slot}:{where.token}"
        headers["x-forwarded-for"] = _client_host(scope)
        data = body.held if body.held is not None else body.stream()
        try:
            return await self._client().request(
                scope["method"], URL(target, encoded=True), headers=headers, data=data, allow_redirects=False
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Unreachable(str(exc) or type(exc).__name__) from exc

    async def relay(self, response: aiohttp.ClientResponse, receive: Receive, send: Send) -> None:
        """Send `response` to the client: whole when its length is known and small (most
        answers: one body message), else streamed as it arrives, stopping early (and closing
        it) when the client goes away (a change feed, an export). Raises Unreachable when the
        owner stops mid-response (the client's answer is then cut short)."""
        try:
            headers = [(k.lower(), v) for k, v in response.raw_headers if k.lower() not in HOP_BY_HOP]
            start = {"type": "http.response.start", "status": response.status, "headers": headers}
            length = response.content_length
            if length is not None and length <= self.config.replay_bytes:
                body = await response.read()
                await send(start)
                await send({"type": "http.response.body", "body": body, "more_body": False})
                return
            await send(start)
            await self._stream(response, receive, send)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Unreachable(str(exc) or type(exc).__name__) from exc
        finally:
            response.release()

    async def _stream(self, response: aiohttp.ClientResponse, receive: Receive, send: Send) -> None:
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            async for chunk in response.content.iter_any():
                if gone.done():
                    return
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            gone.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await gone


class Unreachable(Exception):
    """The owner could not be reached, or stopped answering."""


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
