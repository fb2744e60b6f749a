"""A joining node listens before it joins: its port is bound before it registers in etcd, so a
port in use stops it (exit 2, one line) having touched neither etcd nor its data dir, and a
request sent to it as soon as it owns slots waits in its listen backlog until it serves, never
refused (a refused connection is 503 `owner_unreachable` through the other nodes)."""

from __future__ import annotations

import os
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from cluster.keys import Keyspace
from cluster.slots import assignment, slot_of
from tests.cluster.admin import listing
from tests.cluster.peers import Peers
from tests.cluster.test_serving import Nodes, running_nodes
from tests.support.etcd import EtcdCluster
from tests.support.server import ServerProcess, run_command
from tests.support.waiting import wait_until


def _env() -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SQLFLEET_")}
    return {**environment, "SQLFLEET_ADMIN_KEY": "k" * 32}


def test_a_node_whose_port_is_taken_exits_2_and_leaves_nothing_in_etcd(peers: Peers, tmp_path: Path) -> None:
    data = tmp_path / "data"
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        command = [sys.executable, "-m", "ops", "serve", "--host", "127.0.0.1", "--port", str(port)]
        command += ["--cluster-etcd", ",".join(peers.etcd.endpoints), "--cluster-name", peers.name]
        command += ["--node-id", "n9", "--data-dir", str(data), "--replica-url", (tmp_path / "r").as_uri()]
        refused = run_command(command, cwd=tmp_path, timeout=60, env=_env())
    assert refused.returncode == 2, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "in use" in lines[0], lines
    assert not data.exists() and not (tmp_path / "r").exists()
    assert listing(peers, Keyspace(peers.name).root) == {}


def _node_url(via: ServerProcess, node: str) -> str:
    """`node`'s URL once `via` sees it registered, else ""."""
    with via.client(timeout=5) as http:
        info = http.get("/v1/admin/cluster").json()["nodes"].get(node)
    return "" if info is None or info.get("state") != "live" else str(info["url"])


def _accepts(url: str) -> bool:
    """Whether a TCP connection to `url`'s port opens (a listening socket: the backlog takes it)."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "", parts.port or 80), timeout=5):
            return True
    except OSError:
        return False


class Asking:
    """Reads of `tenants` through `via` from a thread while the block runs; every error's code and message."""

    def __init__(self, via: ServerProcess, tenants: list[str]) -> None:
        self.via, self.tenants = via, tenants
        self.codes: list[str] = []
        self.ok = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._ask)

    def __enter__(self) -> Asking:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def _ask(self) -> None:
        n = 0
        with self.via.client(timeout=60) as http:
            while not self._stop.is_set():
                tenant = self.tenants[n % len(self.tenants)]
                n += 1
                r = http.post(f"/v1/tenants/{tenant}/query", json={"sql": "SELECT 1"})
                if r.status_code == 200:
                    self.ok += 1
                else:
                    self.codes.append(r.json()["error"]["code"] + " " + r.json()["error"]["message"])


def _moving_to(node: str, nodes: Nodes, count: int) -> Iterator[str]:
    """Tenants, created through n1, whose slots the controller gives `node` once it joins."""
    after = assignment(("n1", "n2", node))
    made = 0
    with nodes.servers["n1"].client() as http:
        for n in range(2000):
            tenant = f"j-{n}"
            if after[slot_of(tenant)] != node:
                continue
            assert http.post("/v1/admin/tenants", json={"id": tenant}).status_code == 201
            yield tenant
            made += 1
            if made == count:
                return


def test_a_joining_node_listens_before_it_registers_and_is_never_refused(
    etcd: EtcdCluster, tmp_path: Path
) -> None:
    with running_nodes(etcd, tmp_path) as nodes:
        tenants = list(_moving_to("n3", nodes, 8))
        n1 = nodes.servers["n1"]
        joining = threading.Thread(target=nodes.start, args=("n3",))
        with Asking(n1, tenants) as asking:
            joining.start()
            try:
                url = wait_until(lambda: _node_url(n1, "n3"), timeout=60, interval=0.005)
                assert _accepts(url), "n3 registered in etcd before it listened"
            finally:
                joining.join(120)
            nodes.settled(("n1", "n2", "n3"))
            done = asking.ok
            wait_until(lambda: asking.ok > done + 20, timeout=30)  # served by n3 through n1
        assert not [c for c in asking.codes if c.startswith("owner_unreachable")], asking.codes
        assert httpx.get(f"{nodes.servers['n3'].url}/readyz", timeout=5).status_code == 200
