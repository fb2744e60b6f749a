from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest

from cluster.errors import EtcdUnavailable
from cluster.kv import Compare, Op, Put, TxnResult
from tests.cluster.admin import assign, owners, revoke
from tests.cluster.peers import Peer, Peers
from tests.support.etcd import EtcdCluster
from tests.support.waiting import wait_until


def owned_all(peer: Peer, slots: set[int]) -> bool:
    return slots <= peer.owns().keys() and all(
        peer.ownership is not None and peer.ownership.owns(s) for s in slots
    )


def test_a_node_claims_what_is_assigned_to_it_in_batches(peers: Peers) -> None:
    a = peers.start("a")
    slots = set(range(0, 1000))
    assign(peers, dict.fromkeys(slots, "a"))
    wait_until(lambda: owned_all(a, slots), timeout=60)
    assert a.ownership is not None
    assert a.ownership.claim_transactions <= 2 * len(slots) // 64  # batched, a few singles at most
    in_etcd = owners(peers)
    assert in_etcd.keys() == slots
    assert all(in_etcd[s] == ("a", token) for s, token in a.owns().items())
    assert not a.ownership.owns(5, token=a.owns()[5] + 1)  # another token is not ours


def test_two_nodes_racing_for_slots_never_both_own_one(peers: Peers) -> None:
    slots = set(range(100, 356))
    assign(peers, dict.fromkeys(slots, "a"))
    a, b = peers.start("a"), peers.start("b")
    assert a.ownership is not None and b.ownership is not None
    wait_until(lambda: owned_all(a, slots), timeout=60)
    first = a.owns()
    both: list[int] = []
    done = threading.Event()
    move: list[tuple[Peer, Peer]] = [(b, a)]  # (giver, taker) of the move under way

    def watch() -> None:  # sample both nodes' views while the slots move
        # The taker is read first, the giver second: a giver still holding a slot after the
        # taker was seen with it held it at that moment too (no node takes a slot back within
        # one move), so what is found is a real overlap; the other order would find a slot
        # released and claimed between the two reads. A sample across two moves is dropped.
        while not done.is_set():
            current = move[0]
            giver, taker = current
            assert giver.ownership is not None and taker.ownership is not None
            taken = [s for s in slots if taker.ownership.owns(s)]
            held = [s for s in taken if giver.ownership.owns(s)]
            if move[0] is current:
                both.extend(held)

    sampler = threading.Thread(target=watch)
    sampler.start()
    try:
        for turn in range(4):  # back and forth: every move is a release by one and a claim by the other
            winner, loser = (b, a) if turn % 2 == 0 else (a, b)
            move[0] = (loser, winner)
            assign(peers, dict.fromkeys(slots, winner.id))
            wait_until(lambda w=winner: owned_all(w, slots), timeout=30)  # type: ignore[misc]
    finally:
        done.set()
        sampler.join()
    assert both == []
    assert a.owns().keys() == slots and b.owns() == {}
    assert all(a.owns()[s] > first[s] for s in slots)  # every new claim has a higher token
    assert {node for node, _ in owners(peers).values()} == {"a"}


def test_claims_wait_for_the_previous_owner(peers: Peers) -> None:
    a = peers.start("a")
    assign(peers, {7: "a"})
    wait_until(lambda: owned_all(a, {7}))
    token = a.owns()[7]
    b = peers.start("b")
    a.node.stop()  # gone without releasing: its lease is revoked, the key goes with it
    assign(peers, {7: "b"})
    wait_until(lambda: owned_all(b, {7}))
    assert b.owns()[7] > token


def test_claims_keep_working_when_an_etcd_member_dies(peers3: Peers, etcd3: EtcdCluster) -> None:
    a = peers3.start("a")
    assign(peers3, dict.fromkeys(range(64), "a"))
    wait_until(lambda: owned_all(a, set(range(64))))
    etcd3.kill(etcd3.leader_index())
    assign(peers3, dict.fromkeys(range(64, 200), "a"))
    wait_until(lambda: owned_all(a, set(range(200))), timeout=60)
    # and the node stayed alive through it: its lease held over two TTLs
    for _ in range(2 * 8):
        assert a.node.alive(), a.node.why_not_serving()
        time.sleep(a.node.config.lease_ttl / 8)
    assert len(owners(peers3)) == 200


def test_a_release_stops_serving_then_drains_then_frees_the_slot(peers: Peers) -> None:
    seen: list[tuple[frozenset[int], bool]] = []

    def drain(tokens: Mapping[int, int]) -> None:  # the server's planned-move hook
        assert a.ownership is not None
        seen.append((frozenset(tokens), any(a.ownership.owns(s) for s in tokens)))

    a = peers.start("a", before_release=drain)
    b = peers.start("b")
    slots = set(range(10))
    assign(peers, dict.fromkeys(slots, "a"))
    wait_until(lambda: owned_all(a, slots))
    assign(peers, dict.fromkeys(range(5), "b"))
    wait_until(lambda: owned_all(b, set(range(5))))
    assert a.owns().keys() == set(range(5, 10))
    assert seen and frozenset().union(*(s for s, _ in seen)) == set(range(5))
    assert not any(serving for _, serving in seen)  # nothing served while draining: what it ships is final


def test_a_failed_drain_keeps_the_slots_and_is_tried_again(peers: Peers) -> None:
    attempts: list[frozenset[int]] = []

    def drain(tokens: Mapping[int, int]) -> None:
        attempts.append(frozenset(tokens))
        if len(attempts) == 1:
            raise OSError("the replica is down")

    a = peers.start("a", before_release=drain)
    b = peers.start("b")
    assign(peers, dict.fromkeys(range(4), "a"))
    wait_until(lambda: owned_all(a, set(range(4))))
    assign(peers, dict.fromkeys(range(4), "b"))
    wait_until(lambda: owned_all(b, set(range(4))), timeout=30)
    assert len(attempts) >= 2 and attempts[0] == frozenset(range(4))


def test_after_a_lost_lease_old_tokens_never_count_again(peers: Peers) -> None:
    a = peers.start("a")
    assert a.ownership is not None
    slots = set(range(10))
    assign(peers, dict.fromkeys(slots, "a"))
    wait_until(lambda: owned_all(a, slots))
    old = a.owns()
    first = a.node.incarnation
    assert a.node.lease is not None
    revoke(peers, a.node.lease.id)
    wait_until(lambda: a.node.incarnation not in (None, first), timeout=30)
    assert not any(a.ownership.owns(s, t) for s, t in old.items())
    wait_until(lambda: owned_all(a, slots), timeout=30)  # claimed again, as the new incarnation
    assert all(a.owns()[s] > old[s] for s in slots)


def lose_a_reply(
    peer: Peer, monkeypatch: pytest.MonkeyPatch, wanted: Callable[[Sequence[Op]], bool]
) -> list[int]:
    """Make the first of `peer`'s etcd transactions for which `wanted(success ops)` holds
    commit but answer EtcdUnavailable, as a call that timed out on a busy etcd does; the error
    comes once the node's own watch has the commit (a late reply). Returns the commit revision
    so lost, once it is."""
    etcd = peer.node.etcd
    real = etcd.txn
    lost: list[int] = []

    async def txn(compares: Sequence[Compare], success: Sequence[Op], *args: Any, **kwargs: Any) -> TxnResult:
        result = await real(compares, success, *args, **kwargs)
        if not lost and result.succeeded and wanted(success):
            lost.append(result.revision)
            await peer.node.mirror(peer.node.keys.owners).wait_revision(result.revision)
            raise EtcdUnavailable("etcd could not answer now (the reply was lost)")
        return result

    monkeypatch.setattr(etcd, "txn", txn)
    return lost


def test_a_claim_whose_reply_was_lost_is_still_ours(peers: Peers, monkeypatch: pytest.MonkeyPatch) -> None:
    a = peers.start("a")
    lost = lose_a_reply(a, monkeypatch, lambda ops: any(isinstance(op, Put) for op in ops))
    assign(peers, dict.fromkeys(range(3), "a"))
    wait_until(lambda: owned_all(a, set(range(3))))  # before: its own key kept it from claiming
    assert len(lost) == 1 and a.owns() == dict.fromkeys(range(3), lost[0])
    assign(peers, dict.fromkeys(range(3), "b"))  # and it is released like any other
    b = peers.start("b")
    wait_until(lambda: owned_all(b, set(range(3))))
    assert a.owns() == {}


def test_a_release_whose_reply_was_lost_is_not_taken_back(
    peers: Peers, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = peers.start("a"), peers.start("b")
    assign(peers, {5: "a"})
    wait_until(lambda: owned_all(a, {5}))
    lost = lose_a_reply(a, monkeypatch, lambda ops: not any(isinstance(op, Put) for op in ops))
    assign(peers, {5: "b"})
    wait_until(lambda: owned_all(b, {5}))
    assert lost and a.owns() == {}
