from __future__ import annotations

from cluster.agent import Agent
from cluster.slots import SLOTS
from tests.cluster.peers import Peers
from tests.support.waiting import wait_until


def test_one_agent_serves_every_tenant_and_routes_to_itself(peers: Peers) -> None:
    agent = Agent(peers.config("solo"))
    agent.start()
    try:
        wait_until(lambda: len(agent.ownership.owned()) == SLOTS and agent.routing.ready, timeout=60)
        wait_until(lambda: agent.route("acme") is not None)
        route = agent.route("acme")
        assert route is not None and route.node == "solo" and route.url == "http://solo.invalid:8080"
        assert agent.serves("acme") and agent.serves("acme", route.token)
        assert not agent.serves("acme", route.token + 1)
        assert agent.why_not_serving() is None
    finally:
        agent.stop()
    assert not agent.serves("acme") and agent.why_not_serving() == "left the cluster"


def test_a_drain_is_marked_only_while_the_nodes_it_must_keep_are_not_draining(peers: Peers) -> None:
    """Session 6: two drains sent at once for the last two nodes each looked at a view without
    the other's mark and both were written. The mark is now one etcd transaction guarded by the
    nodes that must stay: a mark of one of them (even one this agent's watch has not seen) wins."""
    agent = Agent(peers.config("solo"))
    agent.start()
    try:
        assert agent.set_draining("a", True, keep={"b", "c"})
        assert agent.draining_now() == {"a"}
        assert not agent.set_draining("b", True, keep={"a"})  # "a" was marked first: nothing written
        assert agent.draining_now() == {"a"}
        assert agent.set_draining("b", True, keep={"c"})
        assert agent.draining_now() == {"a", "b"}
        assert agent.set_draining("a", False, keep={"b"})  # an undo is never refused
        wait_until(lambda: agent.draining() == {"b"})
    finally:
        agent.stop()
