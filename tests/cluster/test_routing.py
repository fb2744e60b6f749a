from __future__ import annotations

from cluster.keys import Keyspace
from cluster.mirror import PrefixMirror
from cluster.routing import NodeInfo, Route
from cluster.slots import SLOTS, slot_of
from tests.cluster.admin import assign, owners, with_etcd
from tests.cluster.peers import Peer, Peers
from tests.support.etcd import EtcdCluster
from tests.support.waiting import wait_until


def routes_match(peer: Peer, peers: Peers) -> bool:
    assert peer.routing is not None
    want = owners(peers)
    table = peer.routing.table()
    return all(
        (table[s] is not None and (table[s].node, table[s].token) == want[s])  # type: ignore[union-attr]
        if s in want
        else table[s] is None
        for s in range(SLOTS)
    )


def owner_mirror(peer: Peer) -> PrefixMirror:
    async def get() -> PrefixMirror:
        return peer.node.mirror(peer.node.keys.owners)

    return peer.node.call(get())


def test_every_node_routes_every_slot_to_its_owner(peers: Peers) -> None:
    a = peers.start("a", controller=True, routing=True)
    b = peers.start("b", controller=True, routing=True)
    wait_until(lambda: len(a.owns()) + len(b.owns()) == SLOTS, timeout=60)
    for peer in (a, b):
        wait_until(lambda p=peer: routes_match(p, peers), timeout=30, interval=0.2)  # type: ignore[misc]
        assert peer.routing is not None
        assert peer.routing.nodes() == {
            "a": NodeInfo("a", "http://a.invalid:8080", str(a.node.incarnation)),
            "b": NodeInfo("b", "http://b.invalid:8080", str(b.node.incarnation)),
        }
    assert a.routing is not None
    route = a.routing.route_tenant("foo")
    assert isinstance(route, Route) and route == a.routing.route(slot_of("foo"))
    holder = a if slot_of("foo") in a.owns() else b
    assert (route.node, route.token, route.url) == (
        holder.id,
        holder.owns()[slot_of("foo")],
        f"http://{holder.id}.invalid:8080",
    )

    b.node.stop()  # its routes go with its lease, until a claims the slots
    wait_until(lambda: len(a.owns()) == SLOTS, timeout=60)
    wait_until(lambda: routes_match(a, peers), timeout=30, interval=0.2)
    assert a.routing.nodes().keys() == {"a"}


def test_the_routing_table_converges_after_the_watch_stream_is_lost(
    peers3: Peers, etcd3: EtcdCluster
) -> None:
    first, others = etcd3.endpoints[:1], etcd3.endpoints[1:]
    reader = peers3.start("reader", ownership=False, routing=True, endpoints=first, ttl=5)
    writer = peers3.start("writer", endpoints=others)
    assign(peers3, dict.fromkeys(range(100), "writer"))
    wait_until(lambda: routes_match(reader, peers3), timeout=30, interval=0.2)
    mirror = owner_mirror(reader)

    # the member the reader watches through dies; slots change meanwhile; it comes back
    etcd3.kill(0)
    assign(peers3, dict.fromkeys(range(100, 200), "writer"))
    wait_until(lambda: len(writer.owns()) == 200)
    etcd3.restart(0)
    wait_until(lambda: routes_match(reader, peers3) and len(owners(peers3)) == 200, timeout=60, interval=0.2)
    assert mirror.reconnects >= 1 and mirror.resyncs == 0  # picked up from its last revision

    # again, and this time etcd compacts the history the watch would resume from
    etcd3.kill(0)
    assign(peers3, dict.fromkeys(range(200, 300), "writer"))
    wait_until(lambda: len(writer.owns()) == 300)
    revision = with_etcd(
        peers3, lambda etcd: etcd.get_prefix(Keyspace(peers3.name).owners), endpoints=others
    ).revision
    with_etcd(peers3, lambda etcd: etcd.compact(revision), endpoints=others)
    etcd3.restart(0)
    wait_until(lambda: routes_match(reader, peers3) and len(owners(peers3)) == 300, timeout=60, interval=0.2)
    assert mirror.resyncs >= 1  # listed again
