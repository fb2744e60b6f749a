"""Hrana WebSockets while their tenant moves (issue 17, session 4, findings 3 and 4): a drain of
the owner closes every socket of its tenants, held on the owner itself or relayed through another
node, with 1012 and a reason saying the tenant moved, so that clients reconnect; a new socket
through any node then reaches the new owner."""

from __future__ import annotations

from pathlib import Path

from router.hrana.ws.moves import MOVED_CODE, moved_reason
from tests.cluster.test_serving import Nodes, running_nodes
from tests.support.cli import as_json, cli
from tests.support.etcd import EtcdCluster
from tests.support.websocket import HranaSocket, execute, hrana_socket, integer


def test_a_drain_closes_the_owners_websockets_saying_the_tenant_moved(
    etcd: EtcdCluster, tmp_path: Path
) -> None:
    with running_nodes(etcd, tmp_path) as nodes:
        tenant = _tenant_of(nodes, "n2")
        with nodes.servers["n1"].client() as http:
            token = http.post(f"/v1/admin/tenants/{tenant}/tokens", json={"access": "rw"}).json()["token"]
        direct, relayed = (_ws(nodes, via) + f"/v1/tenants/{tenant}" for via in ("n2", "n1"))
        with hrana_socket(direct) as on_owner, hrana_socket(relayed) as through_n1:
            for ws in (on_owner, through_n1):
                _serves(ws, token)
            drained = as_json(cli(nodes.servers["n1"], "cluster", "drain", "n2", "--json"))
            assert drained["nodes"]["n2"]["slots"] == 0, drained
            # finding 3: the owner's own socket was never closed (every request: slot_unowned);
            # finding 4: the relayed one said the owner "lost its cluster lease"
            for ws in (on_owner, through_n1):
                assert ws.closed_with(timeout=30) == (MOVED_CODE, moved_reason(tenant))
        with hrana_socket(direct) as again:  # reconnected, at the drained node's URL too
            _serves(again, token)


def _serves(ws: HranaSocket, token: str) -> None:
    assert ws.hello(token)["type"] == "hello_ok"
    assert ws.call({"type": "open_stream", "stream_id": 1})["type"] == "response_ok"
    got = ws.call(execute(1, "SELECT 1"))
    assert got["response"]["result"]["rows"] == [[integer(1)]], got


def _tenant_of(nodes: Nodes, owner: str) -> str:
    """A tenant `owner` serves, created through n1."""
    with nodes.servers["n1"].client() as http:
        for n in range(64):
            tenant = f"ws-{n}"
            assert http.post("/v1/admin/tenants", json={"id": tenant}).status_code == 201
            if nodes.owner(tenant) == owner:
                return tenant
    raise AssertionError(f"64 tenants, none on {owner}")


def _ws(nodes: Nodes, via: str) -> str:
    return "ws" + nodes.servers[via].url.removeprefix("http")
