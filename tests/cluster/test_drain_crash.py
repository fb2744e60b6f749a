"""A node that stops in the middle of a drain (session 6, a newcomer's finding): the slots it had
not handed over yet were claimed by their new owners with no handoff manifest, since the
controller had already assigned them away (their tenants were 404, or an older copy came back:
acknowledged writes lost, even with `--ack replica`). A move is now pending until its giver
hands the slot over; a slot whose giver stopped first is that giver's again, held for its
takeover like its other slots (or re-claimed by it if it comes back within the grace)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ops.moto_s3 import MotoServer
from tests.cluster.test_failover import GRACE, TTL, _theirs, replica_acked_nodes
from tests.cluster.test_serving import Nodes, Writes
from tests.support.etcd import EtcdCluster
from tests.support.waiting import wait_until

COUNT = 16  # tenants written to (each node owns some of them)


def _slots(nodes: Nodes, node: str) -> int:
    with nodes.servers["n1"].client() as http:
        slots: int = http.get("/v1/admin/cluster").json()["nodes"][node]["slots"]
    return slots


@pytest.mark.parametrize("stop", ["kill -9", "SIGTERM"])
def test_a_node_stopped_mid_drain_loses_no_acknowledged_write(
    etcd: EtcdCluster, moto_server: MotoServer, tmp_path: Path, stop: str
) -> None:
    with replica_acked_nodes(etcd, moto_server, tmp_path, "drain-crash") as nodes:
        n2 = nodes.servers["n2"]
        with Writes(nodes, via="n1", count=COUNT) as writes:
            theirs = _theirs(nodes, writes, "n2", via="n1")
            before = _slots(nodes, "n2")
            with nodes.servers["n1"].client() as http:
                assert http.post("/v1/admin/cluster/nodes/n2/drain").status_code == 200
            # stopped once it handed some slots over and not all: the others are mid-move
            wait_until(lambda: 0 < _slots(nodes, "n2") < before, timeout=30, interval=0.01)
            stopped = time.monotonic()
            if stop == "kill -9":
                n2.kill9()
            else:
                n2.terminate()
            wait_until(lambda: writes.first_ack(theirs, after=stopped), timeout=TTL + GRACE + 60)
            nodes.settled(("n1",))  # every slot served again, by the one node left
        assert "took over node n2" in nodes.servers["n1"].log()
        writes.check(via=("n1",))  # every acknowledged write of every tenant, n2's included
