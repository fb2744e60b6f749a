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

from cluster.slots import assignment
from ops.process import REPO, pause, resume, spawn, stop
from tests.cluster.admin import assign, assigned, keys, listing, owners
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
