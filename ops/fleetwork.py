"""Fleet-wide schema work in a cluster (issue 17): groups and rollouts live in etcd, every node
follows them (cluster.fleetwork's records; keys in cluster.keys).

Groups. `groups/<name>` holds the group's definition: how it was created (schema script or
template), its registered migration files and the head released fleet-wide. A change is
checked on this node (a scratch template, as on a single server), then written with a
compare-and-swap on the key's mod revision, so of two racing changes through two nodes one
wins and the other gets 409. Every node applies each definition to its local GroupStore in one
applier thread (idempotent: a group, a file or a release already there is kept), catches up
before serving, and a write through it answers once it is applied here.

Rollouts. `rollouts/<id>` holds the spec (group, target, options, canary shares) and its
control (running, stopped, aborted, completed); each node runs a part over the tenants it owns
(schema_sync.rollout, which then releases nothing) and writes it to
`rollouts/<id>/progress/<node>`. A part carries the fingerprint of the slots it covered (their
fencing tokens): the rollout is done when every slot has an owner and each owner's newest part
covered exactly the slots it owns now. So a node that gains slots (a drain, a takeover, a
restart) runs its part again, and a dead node's stale part stops counting once its slots are
owned elsewhere. Then one node releases: a transaction on the group (released head) and the
spec (completed); every node's applier migrates its template; tenants still behind (restored
later, say) catch up lazily on open. Etcd holds O(groups + rollouts x nodes) keys.

Why here: this joins cluster (etcd) and schema_sync, which may not import each other.
"""

from __future__ import annotations

from pathlib import Path

from ops.fleet_groups import FleetGroups
from ops.fleet_rollouts import FleetRollouts
from ops.node import ClusterNode
from schema_sync.groups import GroupStore
from schema_sync.rollouts import Rollouts
from tenants.fleet import Fleet

__all__ = ["FleetGroups", "FleetRollouts", "group_store", "rollouts"]


def group_store(data_dir: Path, timeout: float, node: ClusterNode | None) -> GroupStore:
    """The server's groups: local on a single server; in a cluster, fleet-wide and caught up."""
    if node is None:
        return GroupStore(data_dir, timeout)
    store = FleetGroups(data_dir, timeout, node.agent.node)
    store.start()
    return store


def rollouts(groups: GroupStore, fleet: Fleet, concurrency: int, node: ClusterNode | None) -> Rollouts:
    """The server's rollouts: local on a single server; in a cluster, fleet-wide (its runner
    starts with `start_runner`, once the server is built)."""
    if node is None or not isinstance(groups, FleetGroups):
        return Rollouts(groups, fleet, concurrency)
    return FleetRollouts(groups, fleet, concurrency, node.agent, node.restore_handed_over)
