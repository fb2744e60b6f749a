from __future__ import annotations

import subprocess
import sys
import time

from tests.cluster.admin import node_record, revoke
from tests.cluster.peers import Peers
from tests.support.etcd import EtcdCluster
from tests.support.waiting import wait_until


def test_a_node_registers_on_its_lease(peers: Peers) -> None:
    peer = peers.start("n1", ownership=False)
    node = peer.node
    assert node.alive() and node.why_not_serving() is None
    assert node.lease is not None and node.incarnation == f"{node.lease.id:x}"
    record = {"url": "http://n1.invalid:8080", "incarnation": node.incarnation, "process": node.incarnation}
    assert node_record(peers, "n1") == record
    assert node.valid_until <= time.monotonic() + node.lease.ttl
    node.stop()
    assert not node.alive() and node.why_not_serving() == "left the cluster"
    assert node_record(peers, "n1") is None  # the lease was revoked with it


def test_a_lost_lease_stops_serving_at_once_and_rejoins_as_a_new_incarnation(peers: Peers) -> None:
    lost: list[str] = []
    peer = peers.start("n1", ownership=False, on_lease_lost=lost.append)
    node = peer.node
    first = node.incarnation
    assert node.lease is not None
    revoke(peers, node.lease.id)
    # the next keep-alive (every TTL/4) hears TTL 0: not serving, callback, new lease
    wait_until(lambda: lost == ["etcd lease lost"], timeout=30)
    wait_until(lambda: node.alive() and node.incarnation not in (None, first), timeout=30)
    # a new incarnation of the lease; the process still writes its segments under its first
    record = {"url": "http://n1.invalid:8080", "incarnation": node.incarnation, "process": first}
    assert node_record(peers, "n1") == record
    assert node.process_incarnation == first


def test_missed_keepalives_stop_serving_within_the_ttl(peers: Peers) -> None:
    node = peers.start("n1", ownership=False).node
    paused = time.monotonic()
    node.keepalives_paused = True
    wait_until(lambda: not node.alive(), timeout=node.config.lease_ttl + 30)
    assert node.valid_until <= paused + node.config.lease_ttl  # it stopped within the TTL
    assert node.why_not_serving() == "etcd lease not renewed in time"
    node.keepalives_paused = False
    wait_until(node.alive, timeout=30)  # the lease expired meanwhile: a new incarnation


def test_etcd_unreachable_stops_serving_within_the_ttl_and_says_why(peers: Peers, etcd: EtcdCluster) -> None:
    node = peers.start("n1", ownership=False).node
    etcd.pause()
    paused = time.monotonic()
    try:
        wait_until(lambda: not node.alive(), timeout=node.config.lease_ttl + 30)
        assert node.valid_until <= paused + node.config.lease_ttl  # it stopped within the TTL
        wait_until(lambda: str(node.why_not_serving()).startswith("etcd unreachable since 20"), timeout=30)
    finally:
        etcd.resume()
    wait_until(node.alive, timeout=30)
    assert node.why_not_serving() is None
    # the same lease if etcd renewed it before its expiry check ran, else a new incarnation
    assert node.incarnation is not None
    assert node_record(peers, "n1") == {
        "url": "http://n1.invalid:8080",
        "incarnation": node.incarnation,
        "process": node.process_incarnation,
    }


def test_without_a_cluster_etcd_is_never_imported() -> None:
    code = (
        "import sys, cluster.membership, cluster.routing, cluster.ownership, cluster.controller\n"
        "assert 'aetcd' not in sys.modules and 'grpc' not in sys.modules, 'imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
