from __future__ import annotations

import time

import pytest

from cluster.errors import ControllerDeposed
from cluster.slots import SLOTS, assignment
from tests.cluster.admin import assigned, keys, listing, owners, revoke
from tests.cluster.peers import Peer, Peers
from tests.support.waiting import wait_until


def settle(peers: Peers, members: list[Peer], timeout: float = 60) -> None:
    """Wait until each of `members` owns exactly its share of the rendezvous assignment of
    them all and assign/ in etcd is that assignment. Both at once: a node that just lost its
    lease still shows its old share for a moment, while the controller has already given it
    to another (the views agree only once the moves are over)."""
    want = assignment(p.id for p in members)
    shares = {p.id: {s for s, n in want.items() if n == p.id} for p in members}

    def settled() -> bool:
        return all(p.owns().keys() == shares[p.id] for p in members) and assigned(peers) == want

    wait_until(settled, timeout, interval=0.1)


def test_the_controller_assigns_every_slot(peers: Peers) -> None:
    a = peers.start("a", controller=True)
    wait_until(lambda: len(a.owns()) == SLOTS, timeout=60)
    assert a.controller is not None and a.controller.is_leader()
    assert assigned(peers) == dict.fromkeys(range(SLOTS), "a")
    assert {node for node, _ in owners(peers).values()} == {"a"}
    assert a.ownership is not None and a.ownership.claim_transactions <= SLOTS // 64 + 64


def test_a_join_moves_only_the_joiners_share_and_a_leave_only_the_leavers(peers: Peers) -> None:
    a = peers.start("a", controller=True)
    b = peers.start("b", controller=True)
    settle(peers, [a, b])
    leader = a if a.controller and a.controller.is_leader() else b
    assert leader.controller is not None
    before = listing(peers, keys(peers).assigns)
    writes = leader.controller.writes

    c = peers.start("c")
    settle(peers, [a, b, c])
    after = listing(peers, keys(peers).assigns)
    moved = {k for k in after if after[k].mod_revision != before[k].mod_revision}
    share = {keys(peers).assign(s) for s, n in assignment(["a", "b", "c"]).items() if n == "c"}
    assert moved == share  # nothing else was even rewritten
    assert leader.controller.writes - writes == len(share)

    c.node.stop()
    settle(peers, [a, b])
    final = listing(peers, keys(peers).assigns)
    moved_back = {k for k in final if final[k].mod_revision != after[k].mod_revision}
    assert moved_back == share


def test_controller_failover_and_a_deposed_controller_writes_nothing(peers: Peers) -> None:
    a = peers.start("a", controller=True)
    wait_until(lambda: a.controller is not None and a.controller.is_leader())
    b = peers.start("b", controller=True)
    settle(peers, [a, b])
    assert a.controller is not None and b.controller is not None and not b.controller.is_leader()
    old_epoch = a.controller.epoch
    assert old_epoch is not None and a.node.lease is not None

    revoke(peers, a.node.lease.id)  # a loses its lease, and the office with it
    wait_until(lambda: b.controller is not None and b.controller.is_leader(), timeout=30)
    assert b.controller.epoch is not None and b.controller.epoch > old_epoch
    with pytest.raises(ControllerDeposed):
        a.node.call(a.controller.write({0: "a"}, old_epoch))
    # a rejoined with a new lease; b, now controller, gives it its share back
    settle(peers, [a, b])
    assert not a.controller.is_leader()


def test_a_departed_nodes_slots_wait_out_the_grace_period(peers: Peers) -> None:
    grace = 3.0
    a = peers.start("a", controller=True, grace=grace)
    b = peers.start("b")
    settle(peers, [a, b])
    b_share = set(b.owns())
    b.node.stop()
    gone = time.monotonic()
    wait_until(lambda: b_share <= a.owns().keys(), timeout=grace + 60)
    assert time.monotonic() - gone >= grace  # not reassigned before the grace period ended
