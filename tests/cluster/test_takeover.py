"""Takeover in the cluster layer: the controller keeps a departed node's slots for the grace
period, then calls the takeover hook (here a stub; the server's fences and hands over, see
tests/cluster/test_failover.py) and moves the slots only once it succeeded, never while the node
is back. An owner paused past its TTL (SIGSTOP) loses its slots to another node, with a higher
token, and serves them no more when it runs again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import pytest

from cluster.controller import Controller
from cluster.slots import assignment
from ops.process import REPO, pause, resume, spawn, stop
from tests.cluster.admin import assign, assigned, keys, listing, owners, with_etcd
from tests.cluster.peers import Peer, Peers
from tests.support.waiting import wait_until


class Child:
    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc

    def state(self) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(b"?\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "the child node exited"
        state: dict[str, Any] = json.loads(line)
        return state

    def state_if(self, condition: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
        state = self.state()
        return state if condition(state) else None


@pytest.fixture
def child(peers: Peers) -> Iterator[Child]:
    config = {**asdict(peers.config("paused", ttl=2)), "endpoints": list(peers.etcd.endpoints)}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = spawn(
        [sys.executable, "-m", "tests.cluster.node_child", json.dumps(config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    try:
        yield Child(proc)
    finally:
        resume(proc)
        if proc.stdin is not None:
            proc.stdin.close()
        stop(proc, 10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_a_paused_owner_loses_its_slots_and_does_not_serve_them_after(peers: Peers, child: Child) -> None:
    slots = set(range(32))
    assign(peers, dict.fromkeys(slots, "paused"))
    state = wait_until(lambda: child.state_if(lambda s: set(s["owns"]) == slots), timeout=20)
    assert state is not None
    old_tokens = {int(k): v for k, v in state["owned"].items()}
    old_incarnation = state["incarnation"]
    other = peers.start("other", ttl=2)

    pause(child.proc)
    assign(peers, dict.fromkeys(slots, "other"))  # as the controller would, once the node is gone
    # the other node claims them once the paused node's lease has run out (TTL 2 s at most)
    wait_until(lambda: other.owns().keys() == slots, timeout=60)
    assert all(other.owns()[s] > old_tokens[s] for s in slots)
    assert {node for node, _ in owners(peers).values()} == {"other"}

    resume(child.proc)
    state = child.state()  # its first look after the pause: its own deadline has passed, or it
    assert state["owns"] == []  # has already heard that its lease is gone
    assert not state["alive"] or state["incarnation"] != old_incarnation
    # and it never gets them back: it rejoins as a new incarnation that owns nothing here
    state = wait_until(lambda: child.state_if(lambda s: bool(s["alive"])), timeout=60)
    assert state is not None
    assert state["owns"] == [] and state["owned"] == {}
    assert other.owns().keys() == slots


@dataclass
class Hook:
    """A stand-in for the server's takeover: records each call; fails while `failing` holds
    reasons, waits while `gate` is clear."""

    calls: list[tuple[str, tuple[str, ...], tuple[int, ...], int, float]] = field(default_factory=list)
    failing: list[str] = field(default_factory=list)
    gate: threading.Event = field(default_factory=threading.Event)
    returned: float = 0.0

    def __post_init__(self) -> None:
        self.gate.set()

    def __call__(self, node: str, incarnations: Collection[str], slots: Collection[int], token: int) -> None:
        assert threading.current_thread() is not threading.main_thread()
        self.calls.append((node, tuple(incarnations), tuple(slots), token, time.monotonic()))
        self.gate.wait(60)
        if self.failing:
            raise RuntimeError(self.failing.pop(0))
        self.returned = time.monotonic()


def _share(peer: Peer, members: list[str]) -> set[int]:
    return {s for s, n in assignment(members).items() if n == peer.id}


def _two(peers: Peers, hook: Hook, grace: float) -> tuple[Peer, Peer]:
    a = peers.start("a", controller=True, grace=grace, take_over=hook)
    wait_until(lambda: a.controller is not None and a.controller.is_leader(), timeout=30)
    b = peers.start("b")
    wait_until(lambda: b.owns().keys() == _share(b, ["a", "b"]), timeout=60)
    return a, b


def test_a_departed_node_is_taken_over_after_the_grace_and_only_then_loses_its_slots(peers: Peers) -> None:
    """The hook fails twice (shown in etcd, the slots stay the node's, tried again with
    backoff), then succeeds: the slots move, with tokens above the hook's, above the old ones."""
    hook = Hook(failing=["the bucket is down", "the bucket is down"])
    grace = 1.0
    a, b = _two(peers, hook, grace)
    share, old_tokens = set(b.owns()), dict(b.owns())
    process = b.node.process_incarnation
    b.node.stop()  # its lease revoked: departed now
    gone = time.monotonic()

    def shown() -> dict[str, Any] | None:
        found = listing(peers, keys(peers).takeovers)
        return json.loads(next(iter(found.values())).value) if found else None

    failing = wait_until(shown, timeout=30)
    assert failing is not None and failing["reason"] == "the bucket is down"
    now = assigned(peers)
    assert {now[s] for s in share} == {"b"}  # nobody else's while it fails
    wait_until(lambda: share <= a.owns().keys(), timeout=60)
    assert len(hook.calls) == 3
    new_tokens = a.owns()
    for node, incarnations, slots, token, _ in hook.calls:
        assert (node, incarnations, set(slots)) == ("b", (process,), share)
        assert max(old_tokens.values()) < token < min(new_tokens[s] for s in share)
    assert hook.calls[0][4] - gone >= grace  # not before the grace period ended
    assert hook.calls[2][4] - hook.calls[1][4] >= 0.5  # backoff
    assert a.controller is not None and a.controller.takeovers == 1
    wait_until(lambda: listing(peers, keys(peers).takeovers) == {}, timeout=30)


def test_a_node_back_while_it_is_taken_over_keeps_its_slots(peers: Peers) -> None:
    hook = Hook()
    _, b = _two(peers, hook, grace=0.5)
    share = set(b.owns())
    hook.gate.clear()  # the takeover blocks until the node is back
    b.node.stop()
    wait_until(lambda: hook.calls, timeout=30)
    back = peers.start("b")
    wait_until(lambda: "b" in {k.decode().rsplit("/", 1)[-1] for k in listing(peers, keys(peers).nodes)})
    hook.gate.set()
    wait_until(lambda: hook.returned, timeout=30)
    wait_until(lambda: back.owns().keys() == share, timeout=60)
    time.sleep(1.0)  # the controller had its chance to move them
    now = assigned(peers)
    assert {now[s] for s in share} == {"b"}
    assert back.owns().keys() == share


class StuckHook:
    """A takeover that hangs for `stuck`: its first `hanging` calls wait for `release`, then
    return as if done; its later ones fail while `down`. Other nodes' calls return at once."""

    def __init__(self, stuck: str, hanging: int) -> None:
        self.stuck = stuck
        self.hanging = hanging
        self.release = threading.Event()
        self.down = True
        self.calls: list[tuple[str, int]] = []  # (node, token)
        self._lock = threading.Lock()

    def __call__(self, node: str, incarnations: Collection[str], slots: Collection[int], token: int) -> None:
        with self._lock:
            self.calls.append((node, token))
            hangs = node == self.stuck and len(self.tokens(node)) <= self.hanging
        if hangs:
            self.release.wait(120)
        elif node == self.stuck and self.down:
            raise RuntimeError("the bucket is still down")

    def tokens(self, node: str) -> list[int]:
        return [t for n, t in list(self.calls) if n == node]


def _shown(peers: Peers, node: str) -> dict[str, Any] | None:
    found = listing(peers, keys(peers).takeover(node))
    return json.loads(next(iter(found.values())).value) if found else None


def test_a_stuck_takeover_holds_up_only_its_own_node_and_its_late_return_moves_nothing(peers: Peers) -> None:
    """Two nodes die; x's takeover hangs past its timeout, twice. y's is not held up: its slots
    all go to the live node (none to x, whose slots stay unserved). x's overrun shows, it is tried
    again under newer tokens; when the hung calls return at last, nothing moves on their word; a
    retry that succeeds moves x's slots, with tokens above its own."""
    hook = StuckHook("x", hanging=2)
    a = peers.start("a")
    controller = Controller(a.node, grace=0.5, take_over=hook, takeover_timeout=2.0)
    a.controller = controller
    controller.start()
    wait_until(controller.is_leader, timeout=30)
    x, y = peers.start("x"), peers.start("y")
    members = ["a", "x", "y"]
    wait_until(lambda: all(p.owns().keys() == _share(p, members) for p in (a, x, y)), timeout=60)
    x_share, y_share = set(x.owns()), set(y.owns())
    try:
        x.node.stop()
        y.node.stop()
        wait_until(lambda: y_share <= a.owns().keys(), timeout=60)
        now = assigned(peers)
        assert {now[s] for s in x_share} == {"x"}  # never handed out without its manifests
        assert not x_share & owners(peers).keys()  # nobody serves them
        assert controller.takeovers == 1

        shown = wait_until(lambda: _shown(peers, "x"), timeout=30)
        assert shown is not None and shown["overrun"] is True and shown["reason"].startswith("overrun")
        wait_until(lambda: controller.overruns.get("x", 0) >= 2, timeout=60)
        hung = hook.tokens("x")
        assert len(hung) == 2 and hung[0] < hung[1]  # the retry hands over at a newer token

        hook.release.set()  # both hung calls return now, long after they were abandoned
        wait_until(lambda: controller.late_returns >= 2, timeout=30)
        calls = len(hook.tokens("x"))
        wait_until(lambda: len(hook.tokens("x")) > calls, timeout=60)  # tried again since (fails)
        now = assigned(peers)
        assert {now[s] for s in x_share} == {"x"}
        assert controller.takeovers == 1

        hook.down = False
        wait_until(lambda: x_share <= a.owns().keys(), timeout=60)
        accepted = hook.tokens("x")[-1]
        assert max(hung) < accepted < min(a.owns()[s] for s in x_share)
        assert controller.takeovers == 2
        wait_until(lambda: listing(peers, keys(peers).takeovers) == {}, timeout=30)
    finally:
        hook.release.set()


def test_a_node_held_for_its_takeover_gives_no_slot_to_a_joiner(peers: Peers) -> None:
    """While b's takeover is not done, a node that joins takes its share of the live nodes'
    slots only: b's tenants have no manifests yet."""
    hook = Hook()
    a, b = _two(peers, hook, grace=0.0)
    a_share, b_share = _share(a, ["a", "b"]), set(b.owns())
    wait_until(lambda: a.owns().keys() == a_share, timeout=60)
    hook.gate.clear()
    try:
        b.node.stop()
        wait_until(lambda: hook.calls, timeout=30)
        c = peers.start("c")
        with_c = assignment(["a", "c"])
        want = {s for s in a_share if with_c[s] == "c"}
        wait_until(lambda: c.owns().keys() == want and a.owns().keys() == a_share - want, timeout=60)
        now = assigned(peers)
        assert {now[s] for s in b_share} == {"b"}
    finally:
        hook.gate.set()


def test_a_takeover_that_returns_after_the_node_ran_again_does_not_count(peers: Peers) -> None:
    """The node ran again while its takeover ran (seen only by its new incarnation: its
    registration came and went unseen): that takeover did not fence it, so it is done again."""
    hook = Hook()
    a, b = _two(peers, hook, grace=0.0)
    share = set(b.owns())
    controller = a.controller
    assert controller is not None
    hook.gate.clear()
    try:
        b.node.stop()
        wait_until(lambda: hook.calls, timeout=30)
        with_etcd(peers, lambda etcd: etcd.put(keys(peers).incarnation("b"), json.dumps("b-again").encode()))
        wait_until(lambda: "b-again" in controller._incarnations.get("b", ()), timeout=30)
        hook.gate.set()
        wait_until(lambda: share <= a.owns().keys(), timeout=60)
        assert [c[1][-1:] for c in hook.calls] == [(b.node.process_incarnation,), ("b-again",)]
        assert controller.takeovers == 1
    finally:
        hook.gate.set()
