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
