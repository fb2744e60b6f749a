"""Every input of `POST|DELETE /v1/admin/cluster/nodes/{node}/drain` and `sqlfleet cluster drain`
(session 5, findings 4 and 8): an unknown or stopped node is 409 `node_not_live` both ways, the
last node not draining is 409 `no_other_node` at once (never a drain that waits for nothing), a
body with a field is 400 as on every admin route, and the CLI exits 2 on what it refuses itself
(an invalid node id), 1 on what the server refuses."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cluster.test_serving import Nodes, running_nodes
from tests.support.cli import cli, fails, usage_error
from tests.support.etcd import EtcdCluster
from tests.support.waiting import wait_until


@pytest.fixture
def nodes(etcd: EtcdCluster, tmp_path: Path) -> Iterator[Nodes]:
    with running_nodes(etcd, tmp_path) as made:
        yield made


def _refused(r: httpx.Response, status: int, code: str, *fragments: str) -> None:
    assert r.status_code == status, r.text
    error: dict[str, Any] = r.json()["error"]
    assert error["code"] == code, r.text
    for fragment in fragments:
        assert fragment in error["message"], r.text


def _draining(http: httpx.Client) -> dict[str, bool]:
    status = http.get("/v1/admin/cluster").json()
    return {node: info["draining"] for node, info in status["nodes"].items()}


def test_every_drain_input_is_checked_before_anything_is_marked(nodes: Nodes) -> None:
    n1 = nodes.servers["n1"]
    with n1.client(timeout=30) as http:
        for method in ("POST", "DELETE"):
            path = "/v1/admin/cluster/nodes/n2/drain"
            for body in ({"bogus": 1}, {"undo": True}):
                r = http.request(method, path, json=body)
                _refused(r, 400, "bad_request", f"unknown fields: {next(iter(body))}")
            _refused(http.request(method, path, content=b"[]"), 400, "bad_request")
            for gone in ("nosuch", "n3"):  # never seen, or not running
                r = http.request(method, f"/v1/admin/cluster/nodes/{gone}/drain")
                _refused(r, 409, "node_not_live", f"node {gone!r} is not registered")
            _refused(
                http.request(method, "/v1/admin/cluster/nodes/-x/drain"),
                400,
                "bad_request",
                "invalid node id",
            )
        assert _draining(http) == {"n1": False, "n2": False}

        r = http.post("/v1/admin/cluster/nodes/n2/drain", content=b"{}")  # an empty object is no field
        assert r.status_code == 200 and r.json()["nodes"]["n2"]["draining"], r.text
        for _ in range(2):  # at once, every time, and n1 stays as it was
            r = http.post("/v1/admin/cluster/nodes/n1/drain")
            _refused(r, 409, "no_other_node", "'n1' is the last live node not draining", "no other node")
        assert _draining(http) == {"n1": False, "n2": True}
        assert http.post("/v1/admin/cluster/nodes/n2/drain").status_code == 200  # again: as it is
        fails(cli(n1, "cluster", "drain", "n1"), "no other node", "HTTP 409 no_other_node")
        r = http.request("DELETE", "/v1/admin/cluster/nodes/n2/drain", content=b" ")
        assert r.status_code == 200 and not r.json()["nodes"]["n2"]["draining"], r.text
    nodes.settled(("n1", "n2"))

    # the CLI: the server's refusals exit 1, what it refuses itself (usage) exits 2, asking nobody
    fails(cli(n1, "cluster", "drain", "--undo", "nosuch"), "not registered", "HTTP 409 node_not_live")
    fails(cli(n1, "cluster", "drain", "nosuch"), "not registered", "HTTP 409 node_not_live")
    for bad in ("../x", "-x", "a/b", "x" * 64):
        usage_error(cli(n1, "cluster", "drain", "--", bad), "invalid node id")
        usage_error(cli(n1, "cluster", "drain", "--undo", "--", bad), "invalid node id")


def test_two_drains_sent_at_once_for_the_last_two_nodes_mark_one(nodes: Nodes) -> None:
    """Session 6 (left open in session 5): each node checked "another node stays" against its own
    view, and both marks were written: no node left to take any slot."""
    for _ in range(2):
        start = threading.Barrier(2)

        def drain(via: str, node: str, start: threading.Barrier = start) -> httpx.Response:
            with nodes.servers[via].client(timeout=30) as http:
                start.wait(timeout=30)
                return http.post(f"/v1/admin/cluster/nodes/{node}/drain")

        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(drain, ("n1", "n2"), ("n1", "n2")))
        assert sorted(r.status_code for r in answers) == [200, 409], [r.text for r in answers]
        refused = next(r for r in answers if r.status_code == 409)
        assert refused.json()["error"]["code"] == "no_other_node", refused.text
        with nodes.servers["n1"].client(timeout=30) as http:
            wait_until(lambda: sorted(_draining(http).values()) == [False, True])
            marked = next(n for n, on in _draining(http).items() if on)
            assert http.delete(f"/v1/admin/cluster/nodes/{marked}/drain").status_code == 200
        nodes.settled(("n1", "n2"))
