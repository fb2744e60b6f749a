"""What a node needs to join a cluster (built by `ops.settings.Settings.cluster_config`)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from cluster.keys import Keyspace
from tenants.errors import BadRequest

# node ids and cluster names go into etcd keys and JSON: host-name-like, no `/`
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
# Seconds a starting node keeps trying etcd: long enough for an etcd member that is restarting
# (or a pod whose Service is not resolvable yet), short enough that a wrong URL is seen at once.
JOIN_TIMEOUT = 10.0


@dataclass(frozen=True)
class ClusterConfig:
    """`endpoints`: etcd client URLs (`http://host:port` or `host:port`); `name`: the cluster's
    key prefix; `node_id`, `node_url`: who this node is and where other nodes reach it;
    `lease_ttl`: seconds the node's lease lives without a keep-alive (the timings below follow
    from it, so one setting tunes them all); `takeover_grace`: seconds the controller keeps the
    slots of a node whose lease ran out before it takes the node over."""

    endpoints: tuple[str, ...]
    name: str
    node_id: str
    node_url: str
    lease_ttl: int
    takeover_grace: float

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise BadRequest("cluster_etcd names no etcd endpoint")
        for setting, value in (("node_id", self.node_id), ("cluster_name", self.name)):
            if not NAME.fullmatch(value):
                raise BadRequest(f"{setting} must be 1-63 of [A-Za-z0-9._-], starting with a letter or digit")
        if self.lease_ttl < 1:
            raise BadRequest("cluster_lease_ttl must be at least 1")
        if self.takeover_grace < 0:
            raise BadRequest("cluster_takeover_grace must not be negative")

    @property
    def keys(self) -> Keyspace:
        return Keyspace(self.name)

    @property
    def join_timeout(self) -> float:
        """Seconds a starting node tries to reach etcd and register before it gives up (the
        server then exits: EtcdUnavailable)."""
        return JOIN_TIMEOUT

    @property
    def keepalive_interval(self) -> float:
        """Seconds between keep-alives: four chances per TTL."""
        return self.lease_ttl / 4

    @property
    def call_timeout(self) -> float:
        """Seconds one etcd call may take before it is retried (elsewhere, if several members)."""
        return min(1.0, self.lease_ttl / 4)

    @property
    def membership_settle(self) -> float:
        """Seconds the controller waits for nodes/ to stop changing before it reassigns."""
        return self.lease_ttl / 8

    @property
    def margin(self) -> float:
        """Seconds before the lease's expiry (counted from the keep-alive's send) at which the
        node stops serving: room for clock rate differences and a slow stop."""
        return min(1.0, self.lease_ttl / 5)
