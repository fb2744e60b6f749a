"""Takeover with the default ack (local disk), end to end: a node killed with its disk lost for
good loses at most its last shipping interval (README, "Durability"), and each of its tenants
comes back on another node consistent — every commit up to some point, none after it — then takes
new writes. (With `--ack replica` nothing acknowledged is lost: tests/cluster/test_failover.py.)"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import httpx

from ops.moto_s3 import BUCKET, MotoServer
from tests.cluster.test_failover import GRACE, TTL, _on_s3, _theirs
from tests.cluster.test_serving import IN_FLIGHT, Writes, running_nodes
from tests.support.etcd import EtcdCluster
from tests.support.s3 import unique_prefix
from tests.support.waiting import wait_until

FLUSH = 0.5  # --backup-flush-interval: the documented loss bound is about this
# what the bound allows on top of the interval: the flush's own upload, on a busy test machine
SLACK = 5.0


def test_a_killed_owner_loses_at_most_its_last_shipping_interval(
    etcd: EtcdCluster, moto_server: MotoServer, tmp_path: Path
) -> None:
    replica = f"s3://{BUCKET}/{unique_prefix('localack')}"
    flags = ("--backup-flush-interval", str(FLUSH), "--backup-catalog-upload-interval", "1")
    with running_nodes(
        etcd, tmp_path, *flags, ttl=TTL, grace=GRACE, replica_url=replica, env=_on_s3(moto_server)
    ) as nodes:
        with Writes(nodes, via="n1", count=12, prefix="local") as writes:
            theirs = _theirs(nodes, writes, "n2", via="n1")
            killed = time.monotonic()
            nodes.servers["n2"].kill9()  # and its disk is never used again
            # an answer n2 sent just before it died may still reach the client through n1 just
            # after: acks this close to the death are n2's (kept or lost), later ones n1's
            dead = time.monotonic() + IN_FLIGHT
            wait_until(lambda: writes.first_ack(theirs, after=killed), timeout=TTL + GRACE + 60)
        acked_at = dict(writes.acked_at_by_value)
        for tenant in theirs:
            with nodes.servers["n1"].client() as http:
                # every slot of n2's is claimed a little after the first: 503 slot_unowned till then
                r = wait_until(functools.partial(_rows, http, tenant), timeout=60)
            assert r is not None
            rows = [row[0] for row in r.json()["rows"]]
            acked = writes.acknowledged[tenant]
            before = [x for x in acked if acked_at[x] < dead]
            after = [x for x in acked if acked_at[x] >= dead]
            kept = [x for x in rows if x in before or x in writes.unknown[tenant]]
            # consistent: what survived of the writes before the kill is a prefix of them
            survived = [x for x in kept if x in before]
            assert survived == before[: len(survived)], (tenant, survived, before)
            # bounded: every write acknowledged well before the kill is there
            old = [x for x in before if acked_at[x] < killed - FLUSH - SLACK]
            assert survived[: len(old)] == old, (tenant, old, survived)
            # and every write acknowledged by the new owner after the takeover
            assert [x for x in rows if x in after] == after, (tenant, rows, after)
            lost = before[len(survived) :]
            window = killed - acked_at[lost[0]] if lost else 0.0
            print(f"{tenant}: {len(lost)} acked writes lost, from the last {window:.2f} s before the kill")


def _rows(http: httpx.Client, tenant: str) -> httpx.Response | None:
    r = http.post(f"/v1/tenants/{tenant}/query", json={"sql": "SELECT x FROM t ORDER BY x"})
    if r.status_code == 503 and r.json()["error"]["code"] == "slot_unowned":
        return None
    assert r.status_code == 200, r.text
    return r
