"""What the proxy answers when it cannot serve a tenant says what the node knows, never a
guessed cause: during an etcd outage nothing moved, the nodes only cannot prove their leases,
and every answer says so (REST through another node, REST on the owner, a WebSocket handshake)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as ws_connect
from websockets.typing import Subprotocol

from tests.cluster.test_serving import TTL, _tenants_on_each_node, running_nodes
from tests.support.etcd import EtcdCluster
from tests.support.waiting import wait_until

GUESSES = ("moved", "could not be reached", "no serving owner")


def _unready(url: str) -> bool:
    r = httpx.get(f"{url}/readyz", timeout=5)
    return r.status_code == 503 and "etcd unreachable" in r.json().get("reason", "")


def test_during_an_etcd_outage_every_refusal_says_the_lease_is_unproven(
    etcd: EtcdCluster, tmp_path: Path
) -> None:
    with running_nodes(etcd, tmp_path) as nodes:
        tenants = _tenants_on_each_node(nodes)
        n1, n2 = nodes.servers["n1"], nodes.servers["n2"]
        with n1.client() as http:
            token = http.post(f"/v1/admin/tenants/{tenants['n2']}/tokens", json={"access": "ro"}).json()[
                "token"
            ]
        etcd.pause()
        try:
            wait_until(lambda: _unready(n1.url) and _unready(n2.url), timeout=4 * TTL)
            with n1.client() as http:
                # n2's tenant, through n1: n2 answers 421 (it cannot prove its lease), twice
                r = http.post(f"/v1/tenants/{tenants['n2']}/query", json={"sql": "SELECT 1"})
                assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
                error = r.json()["error"]
                assert error["code"] == "owner_unreachable", error
                message = error["message"]
                assert f"tenant {tenants['n2']!r}" in message and "not applied" in message, message
                assert "cannot prove its cluster lease" in message and "etcd unreachable since" in message
                assert "this node cannot prove its own cluster lease either" in message, message
                assert not any(guess in message for guess in GUESSES), message
                # n1's own tenant, on n1
                r = http.post(f"/v1/tenants/{tenants['n1']}/query", json={"sql": "SELECT 1"})
                assert r.status_code == 503 and r.json()["error"]["code"] == "slot_unowned", r.text
                message = r.json()["error"]["message"]
                assert "this node holds slot" in message and "cannot prove its cluster lease" in message
                assert "etcd unreachable since" in message and not any(g in message for g in GUESSES)
            # a Hrana WebSocket to n2's tenant through n1: refused with the same words
            url = "ws" + n1.url.removeprefix("http") + f"/v1/tenants/{tenants['n2']}"
            with pytest.raises(InvalidStatus) as refused:
                ws_connect(url, subprotocols=[Subprotocol("hrana3")], open_timeout=30)
            response = refused.value.response
            assert response.status_code == 503, response
            said = json.loads(bytes(response.body or b""))
            assert said["code"] == "OWNER_UNREACHABLE", said  # a Hrana error code
            assert "cannot prove its cluster lease" in said["message"], said
            assert not any(guess in said["message"] for guess in GUESSES), said
            # the root URL: accepted, then closed with the reason
            root = "ws" + n1.url.removeprefix("http") + "/"
            with ws_connect(root, subprotocols=[Subprotocol("hrana3")], open_timeout=30) as ws:
                ws.send(json.dumps({"type": "hello", "jwt": token}))
                with pytest.raises(ConnectionClosed):
                    ws.recv(30)
                assert ws.close_code == 1013 and ws.close_reason is not None
                assert ws.close_reason.startswith("owner_unreachable: "), ws.close_reason
                assert "cannot prove its cluster lease" in ws.close_reason, ws.close_reason
        finally:
            etcd.resume()
        wait_until(lambda: httpx.get(f"{n1.url}/readyz", timeout=5).status_code == 200, timeout=60)
        nodes.settled(("n1", "n2"))
