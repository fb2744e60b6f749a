"""Change feeds while their tenant moves (session 5, findings 2 and 3): a feed held on the owner
ends with `end` tenant_moved once the tenant's slot leaves it (a drain), and one relayed through
another node ends with an `end` event saying why, then a clean end of the body, whether its owner
was drained or paused past its lease; a new feed through any node then reaches the new owner."""

from __future__ import annotations

import asyncio
import json
import queue
import socketserver
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from cluster.slots import assignment, slot_of
from ops.process import pause, resume
from router.changes_api import moved_reason
from router.proxy.forward import Body, Forwarder, ProxyConfig
from router.proxy.placement import Located
from tests.cluster.test_serving import TTL, Nodes, running_nodes
from tests.support.etcd import running_etcd
from tests.support.sse import subscribe
from tests.support.waiting import wait_until

OWNERS = assignment(("n1", "n2"))
FLAGS = ("--changes-heartbeat", "1")


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    with running_etcd(1) as etcd, running_nodes(etcd, tmp_path_factory.mktemp("feed-moves"), *FLAGS) as made:
        yield made


class RawFeed:
    """A feed read whole in a thread: its events (heartbeats left out) and how its body ended
    (None: cleanly; else the error the HTTP client raised, e.g. a truncated chunked body)."""

    def __init__(self, http: httpx.Client, tenant: str, token: str) -> None:
        self.events: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self.broken: BaseException | None = None
        self._thread = threading.Thread(target=self._read, args=(http, tenant, token), daemon=True)
        self._thread.start()
        kind, opened = self.next()
        assert kind == "open", (kind, opened)
        self.position: str = opened["position"]

    def _read(self, http: httpx.Client, tenant: str, token: str) -> None:
        headers = {"authorization": f"Bearer {token}"}
        try:
            with http.stream("GET", f"/v1/tenants/{tenant}/changes", headers=headers) as response:
                assert response.status_code == 200, response.read()
                kind = ""
                for line in response.iter_lines():
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: ") and kind != "heartbeat":
                        self.events.put((kind, json.loads(line[6:])))
        except BaseException as exc:  # what ended the body is what the tests check
            self.broken = exc
        finally:
            self.events.put(("eof", {}))

    def next(self, timeout: float = 30) -> tuple[str, dict[str, Any]]:
        return self.events.get(timeout=timeout)

    def ended(self, timeout: float = 30) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()


def test_a_drain_ends_the_owners_feed_and_a_relayed_one_saying_the_tenant_moved(nodes: Nodes) -> None:
    tenant = _owned_by("n2", "moving")
    token = _made(nodes, tenant)
    n1, n2 = nodes.servers["n1"], nodes.servers["n2"]
    with (
        httpx.Client(base_url=n2.url, timeout=httpx.Timeout(30, read=60)) as on_owner,
        httpx.Client(base_url=n1.url, timeout=httpx.Timeout(30, read=60)) as through_n1,
    ):
        direct, relayed = RawFeed(on_owner, tenant, token), RawFeed(through_n1, tenant, token)
        with n1.client(timeout=120) as http:
            r = http.post("/v1/admin/cluster/nodes/n2/drain")
            assert r.status_code == 200, r.text
            try:
                wait_until(lambda: _owner(nodes, tenant) == "n1", timeout=90)
                # finding 2: the owner's feed heartbeat on forever; finding 3: the relayed one
                # was cut without an `end` (a truncated chunked body)
                assert direct.next() == ("end", {"reason": moved_reason(tenant)})
                # relayed: the owner's own `end`, passed on; or, on a machine so busy that it
                # came later than the relay's grace, the relay's own (also an `end`, then eof)
                kind, data = relayed.next()
                assert kind == "end", (kind, data)
                assert data["reason"] == moved_reason(tenant) or data["reason"].startswith(
                    "owner_unreachable: "
                ), data
                for feed in (direct, relayed):
                    assert feed.next() == ("eof", {})
                    assert feed.ended() and feed.broken is None, feed.broken
                _insert(through_n1, tenant, token, 7)  # on the new owner
                auth = {"authorization": f"Bearer {token}"}
                for via in (on_owner, through_n1):  # reconnected through either node: it is there
                    with subscribe(via, tenant, auth, last_event_id=direct.position) as again:
                        assert again.next().kind == "open"
                        assert again.next().kind == "resync"  # a position of the old owner's feed
                        _insert(through_n1, tenant, token, 8)
                        got = again.next()
                        assert got.kind == "commit" and got.data["changes"][0]["row"] == {"x": 8}, got
            finally:
                assert http.delete("/v1/admin/cluster/nodes/n2/drain").status_code == 200
                nodes.settled(("n1", "n2"))


def test_a_relayed_feed_of_a_paused_owner_ends_with_an_end_event_then_cleanly(nodes: Nodes) -> None:
    tenant = _owned_by("n2", "paused")
    token = _made(nodes, tenant)
    n2 = nodes.servers["n2"]
    with httpx.Client(base_url=nodes.servers["n1"].url, timeout=httpx.Timeout(30, read=60)) as http:
        relayed = RawFeed(http, tenant, token)
        pause(n2.proc)
        try:
            kind, data = relayed.next(timeout=20 * TTL)
            assert kind == "end" and data["reason"].startswith("owner_unreachable: "), (kind, data)
            assert "reconnect" in data["reason"], data
            assert relayed.next() == ("eof", {})
            assert relayed.ended() and relayed.broken is None, relayed.broken
        finally:
            resume(n2.proc)
        nodes.settled(("n1", "n2"))


def _owner(nodes: Nodes, tenant: str) -> str | None:
    """The node serving `tenant` as n1 sees it; None while it has none (mid-handoff)."""
    with nodes.servers["n1"].client() as http:
        r = http.get("/v1/admin/cluster", params={"tenant": tenant})
        assert r.status_code == 200, r.text
    owner = r.json()["tenant"]["owner"]
    return None if owner is None else str(owner["node"])


def _owned_by(node: str, prefix: str) -> str:
    return next(f"{prefix}-{n}" for n in range(4096) if OWNERS[slot_of(f"{prefix}-{n}")] == node)


def _made(nodes: Nodes, tenant: str) -> str:
    """`tenant` created through n1 with an empty table `t`; a rw token for it."""
    with nodes.servers["n1"].client() as http:
        assert http.post("/v1/admin/tenants", json={"id": tenant}).status_code == 201
        r = http.post(f"/v1/tenants/{tenant}/query", json={"sql": "CREATE TABLE t (x)"})
        assert r.status_code == 200, r.text
        token: str = http.post(f"/v1/admin/tenants/{tenant}/tokens", json={"access": "rw"}).json()["token"]
    assert nodes.owner(tenant) == "n2"
    return token


def _insert(http: httpx.Client, tenant: str, token: str, x: int) -> None:
    r = http.post(
        f"/v1/tenants/{tenant}/query",
        json={"sql": f"INSERT INTO t VALUES ({x})"},
        headers={"authorization": f"Bearer {token}"},
    )
    assert r.status_code == 200, r.text


class _DiesMidEvent(socketserver.StreamRequestHandler):
    """An owner whose feed breaks off inside its second event (the process died): the chunked
    body never ends. Without whole events only, the client's parser would take `da` plus our
    `end` for one event."""

    def handle(self) -> None:
        while self.rfile.readline() not in (b"\r\n", b""):
            pass
        whole, torn = b'event: open\ndata: {"position":"g-1"}\n\n', b"id: g-2\nevent: commit\nda"
        self.wfile.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n")
        self.wfile.write(b"transfer-encoding: chunked\r\n\r\n")
        self.wfile.write(b"%x\r\n%s\r\n" % (len(whole + torn), whole + torn))
        self.wfile.flush()
        time.sleep(0.5)  # read by the proxy before the connection drops (aiohttp drops what is unread)


def test_a_relayed_feed_broken_mid_event_passes_on_whole_events_then_an_end() -> None:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _DiesMidEvent)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    where = Located(7, 5, f"http://127.0.0.1:{server.server_address[1]}")
    scope = {"type": "http", "method": "GET", "path": "/v1/tenants/t/changes", "raw_path": b"", "headers": []}
    sent: list[dict[str, Any]] = []

    async def relayed() -> None:
        forwarder = Forwarder(ProxyConfig(5.0, 1.0, 1024, 8, 3.0))
        never = asyncio.Event()

        async def receive() -> dict[str, Any]:
            await never.wait()
            return {"type": "http.disconnect"}

        async def send(message: Any) -> None:
            sent.append(message)

        try:
            response = await forwarder.open(scope, Body(b"", None), where)
            await forwarder.relay(response, receive, send)  # raises Lost for a cut export
        finally:
            await forwarder.aclose()

    try:
        asyncio.run(relayed())
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    body = b"".join(m.get("body", b"") for m in sent[1:])
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}, sent
    opened, end, rest = body.split(b"\n\n")
    assert opened == b'event: open\ndata: {"position":"g-1"}' and rest == b"", body
    assert end.startswith(
        b'event: end\ndata: {"reason":"owner_unreachable: the node serving this tenant closed'
    ), body
