"""Takeover of lost nodes, end to end (issue 17): real etcd, moto S3 and `sqlfleet serve`
processes. A node paused or killed past its lease and the takeover grace is taken over: another
node fences it, adopts its tenants from the replica and answers for them with their data; the
old owner, running again, is fenced and serves nothing; restarted with its data dir it drops its
stale copies and gets its share back with the writes made meanwhile. A node restarted within the
grace keeps its slots and loses nothing, even with the default (local) ack."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from ops.moto_s3 import BUCKET, REGION, MotoServer, aws_env
from ops.process import pause, resume
from tests.cluster.test_serving import Nodes, Writes, running_nodes
from tests.support.cli import cli, ok
from tests.support.etcd import EtcdCluster
from tests.support.s3 import unique_prefix
from tests.support.server import ServerProcess, free_port, run_command
from tests.support.waiting import wait_until

TTL = 2  # the nodes' lease
GRACE = 1.0  # the takeover grace of the tests that take a node over
COUNT = 12  # tenants written to (each node owns some of them)


def _on_s3(moto: MotoServer) -> dict[str, str]:
    return {
        **aws_env(),
        "SQLFLEET_S3_ENDPOINT_URL": moto.url,
        "SQLFLEET_S3_REGION": REGION,
        "SQLFLEET_S3_FORCE_PATH_STYLE": "true",
    }


def _fenced(server: ServerProcess) -> bool:
    r = httpx.get(f"{server.url}/readyz", timeout=5)
    return r.status_code == 503 and "this node was fenced" in r.json().get("reason", "")


def _lease_lost(server: ServerProcess, node: str) -> dict[str, Any] | None:
    """`node`'s entry in `server`'s cluster status once it shows its lease lost, else None."""
    with server.client() as http:
        status = http.get("/v1/admin/cluster").json()
    info: dict[str, Any] | None = status["nodes"].get(node)
    if info is None or info["state"] != "lease_lost":
        return None
    assert status["slots_owned"] == 16384 - info["assigned_slots"], status
    return info


def _theirs(nodes: Nodes, writes: Writes, node: str, via: str) -> list[str]:
    found = [t for t in writes.tenants if nodes.owner(t, via=via) == node]
    assert found, f"no tenant of {node}"
    return found


@contextlib.contextmanager
def replica_acked_nodes(etcd: EtcdCluster, moto: MotoServer, root: Path, name: str) -> Iterator[Nodes]:
    """Two nodes with `--ack replica` over a fresh prefix `name` of moto S3, the short lease and
    grace of this module, and their catalogs uploaded each second (a takeover reads one and the
    last segments, not all of them)."""
    replica = f"s3://{BUCKET}/{unique_prefix(name)}"
    flags = ("--ack", "replica", "--backup-catalog-upload-interval", "1")
    with running_nodes(
        etcd, root, *flags, ttl=TTL, grace=GRACE, replica_url=replica, env=_on_s3(moto)
    ) as nodes:
        yield nodes


def test_a_lost_owner_is_taken_over_fenced_and_never_serves_its_stale_copies(
    etcd: EtcdCluster, moto_server: MotoServer, tmp_path: Path
) -> None:
    with replica_acked_nodes(etcd, moto_server, tmp_path, "failover") as nodes:
        n2 = nodes.servers["n2"]
        with Writes(nodes, via="n1", count=COUNT) as writes:
            theirs = _theirs(nodes, writes, "n2", via="n1")
            # SIGSTOP n2 past its lease and the grace: n1 takes its slots over
            paused = time.monotonic()
            pause(n2.proc)
            try:
                wait_until(lambda: writes.first_ack(theirs, after=paused), timeout=TTL + GRACE + 60)
            finally:
                resume(n2.proc)
            # running again, n2 finds itself fenced: it serves nothing and says why
            wait_until(lambda: _fenced(n2), timeout=30)
        assert all(nodes.owner(t, via="n1") == "n1" for t in theirs)
        assert "took over node n2" in nodes.servers["n1"].log()
        # and never from its own copy: a request sent to it is refused, saying it was fenced
        moved = next(t for at, t in writes.acked_at if at > paused and t in theirs)  # written since
        count = {"sql": "SELECT count(*) FROM t"}
        with n2.client() as http, nodes.servers["n1"].client() as owner:
            r, truth = (
                http.post(f"/v1/tenants/{moved}/query", json=count),
                owner.post(f"/v1/tenants/{moved}/query", json=count),
            )
        assert truth.status_code == 200, truth.text
        assert (r.status_code, r.json()["error"]["code"]) == (503, "node_fenced"), r.text
        with n2.client() as http:  # every request, not only a tenant's; its status says why
            created = http.post("/v1/admin/tenants", json={"id": "after-fence"})
            status = http.get("/v1/admin/cluster").json()
        assert (created.status_code, created.json()["error"]["code"]) == (503, "node_fenced"), created.text
        assert status["nodes"]["n2"]["state"] == "fenced" and not status["serving"]
        writes.check(via=("n1",))  # ack=replica: every acknowledged write, on its new owner

        # restarted with its data dir after the takeover: its copies are stale (n1 wrote since),
        # so it drops them and gets its share back, with n1's writes, through planned moves
        n2.terminate()
        n2 = nodes.start("n2")
        assert "dropped its" in n2.log()
        nodes.settled(("n1", "n2"))
        assert "n2" in {nodes.owner(t, via="n1") for t in writes.tenants}
        writes.check()

        # kill -9 the other node while writes go through n2: its tenants come back on n2, exact
        with Writes(nodes, via="n2", count=COUNT, prefix="kill") as more:
            theirs = _theirs(nodes, more, "n1", via="n2")
            killed = time.monotonic()
            nodes.servers["n1"].kill9()
            first = wait_until(lambda: more.first_ack(theirs, after=killed), timeout=TTL + GRACE + 60)
        assert first is not None
        print(
            f"kill -9 -> first write of a moved tenant: {first - killed:.2f} s (TTL {TTL} s, grace {GRACE} s)"
        )
        more.check(via=("n2",))
        writes.check(via=("n2",))


def test_a_node_restarted_within_the_grace_keeps_its_slots_and_loses_nothing(
    etcd: EtcdCluster, moto_server: MotoServer, tmp_path: Path
) -> None:
    """The default ack (local disk): n2's acknowledged but unshipped commits are in its data dir;
    killed and restarted within the grace, it claims its slots again and ships them."""
    replica = f"s3://{BUCKET}/{unique_prefix('regrace')}"
    with running_nodes(
        etcd, tmp_path, ttl=TTL, grace=60.0, replica_url=replica, env=_on_s3(moto_server)
    ) as nodes:
        with Writes(nodes, via="n1", count=COUNT) as writes:
            theirs = _theirs(nodes, writes, "n2", via="n1")
            killed = time.monotonic()
            nodes.servers["n2"].kill9()
            lost = wait_until(lambda: _lease_lost(nodes.servers["n1"], "n2"), timeout=TTL + 30)
            assert lost is not None
            print(f"kill -9 -> shown as lease lost: {time.monotonic() - killed:.2f} s")
            n1 = nodes.servers["n1"]
            assert 0 < lost["takeover_in_s"] <= 60 and lost["slots"] == 0 and lost["assigned_slots"] > 1000
            status = ok(cli(n1, "cluster", "status"))
            print(status)
            assert "LEASE LOST" in status, status
            shown = cli(n1, "status")  # n1 itself stays ready: only n2's slots are not served
            assert shown.exit_code == 0 and "n2" in shown.stdout and "LEASE LOST" in shown.stdout, (
                shown.stdout
            )
            assert httpx.get(f"{n1.url}/readyz", timeout=5).status_code == 200
            nodes.start("n2")
            wait_until(lambda: writes.first_ack(theirs, after=killed), timeout=60)
        nodes.settled(("n1", "n2"))
        assert {nodes.owner(t, via="n1") for t in theirs} == {"n2"}
        writes.check()
        assert "took over node" not in nodes.servers["n1"].log() + nodes.servers["n2"].log()

        # a node of another cluster pointed at this cluster's replica prefix refuses to start
        other = [sys.executable, "-m", "ops", "serve", "--node-id", "n3", *nodes.common]
        other += ["--cluster-name", "other", "--data-dir", str(tmp_path / "n3"), "--port", str(free_port())]
        env = {**os.environ, **(nodes.env or {}), "SQLFLEET_ADMIN_KEY": "k" * 32}
        refused = run_command(other, cwd=tmp_path, timeout=60, env=env)
        assert refused.returncode == 2, refused.stderr
        assert "as the backups of cluster 'sqlfleet'" in refused.stderr, refused.stderr
        assert "give cluster 'other' a replica prefix of its own" in refused.stderr, refused.stderr
        assert "joining cluster" not in refused.stderr  # refused before it registered in etcd
