"""An owner paused past its TTL (SIGSTOP) loses its slots to another node, with a higher token,
and serves them no more when it runs again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any

import pytest

from ops.process import REPO, spawn, stop
from tests.cluster.admin import assign, owners
from tests.cluster.peers import Peers
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
        os.killpg(proc.pid, signal.SIGCONT)
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

    os.killpg(child.proc.pid, signal.SIGSTOP)
    assign(peers, dict.fromkeys(slots, "other"))  # as the controller would, once the node is gone
    # the other node claims them once the paused node's lease has run out (TTL 2 s at most)
    wait_until(lambda: other.owns().keys() == slots, timeout=60)
    assert all(other.owns()[s] > old_tokens[s] for s in slots)
    assert {node for node, _ in owners(peers).values()} == {"other"}

    os.killpg(child.proc.pid, signal.SIGCONT)
    state = child.state()  # its first look after the pause: its own deadline has passed, or it
    assert state["owns"] == []  # has already heard that its lease is gone
    assert not state["alive"] or state["incarnation"] != old_incarnation
    # and it never gets them back: it rejoins as a new incarnation that owns nothing here
    state = wait_until(lambda: child.state_if(lambda s: bool(s["alive"])), timeout=60)
    assert state is not None
    assert state["owns"] == [] and state["owned"] == {}
    assert other.owns().keys() == slots
