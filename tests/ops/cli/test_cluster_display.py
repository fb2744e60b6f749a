"""How `sqlfleet cluster status` (and `sqlfleet status`) show a node without a lease: a takeover
past its grace is under way, or pending with the reason its attempts failed."""

from __future__ import annotations

from ops.api_types import ClusterNodeInfo
from ops.cli.cluster import node_state

LOST: ClusterNodeInfo = {
    "url": "http://n3",
    "incarnation": "i",
    "slots": 0,
    "draining": False,
    "state": "lease_lost",
    "assigned_slots": 5570,
    "lease_lost_ago_s": 40.0,
    "takeover_in_s": 0.0,
}


def test_a_takeover_past_its_grace_is_under_way_or_pending_with_its_reason() -> None:
    assert node_state({**LOST, "takeover_in_s": 12.0}).endswith(", takeover in 12 s")
    assert node_state(LOST) == "LEASE LOST 40 s ago, 5570 slots not served, takeover under way"
    shown = node_state(LOST, "the replica did not answer within 15 s")
    assert shown.endswith(", takeover pending: the replica did not answer within 15 s"), shown
