"""What a node needs to join a cluster (built by `ops.settings.Settings.cluster_config`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from cluster.keys import Keyspace
from tenants.errors import BadRequest

# node ids and cluster names go into etcd keys and JSON: host-name-like, no `/`
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
NAME_RULE = "1-63 of [A-Za-z0-9._-], starting with a letter or digit"


def check_node_id(node: str) -> str:
    """`node` if it is a valid node id; else raises BadRequest saying the rule."""
    if not NAME.fullmatch(node):
        raise BadRequest(f"invalid node id {node[:80]!r}: {NAME_RULE}")
    return node


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
                raise BadRequest(f"{setting} must be {NAME_RULE}")
        for endpoint in self.endpoints:
            _check_endpoint(endpoint)
        _check_node_url(self.node_url)
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


def _check_node_url(url: str) -> None:
    """Raise BadRequest unless `url` is http(s)://host[:port]: other nodes send requests to it,
    and anything else would make a node that joins, gets slots, and cannot be reached."""
    if not _is_origin(url, ("http", "https")):
        raise BadRequest(f"node_url must be an http(s)://host[:port] URL, not {url!r}")


def _check_endpoint(endpoint: str) -> None:
    """Raise BadRequest unless `endpoint` is http://host[:port] or host[:port] (the etcd client
    speaks plain gRPC: https would not be what it does)."""
    if not _is_origin(endpoint if "//" in endpoint else f"http://{endpoint}", ("http",)):
        raise BadRequest(
            "cluster_etcd: each etcd endpoint must be http://host[:port] or host[:port] (no TLS), "
            f"not {endpoint!r}"
        )


def _is_origin(url: str, schemes: tuple[str, ...]) -> bool:
    """Whether `url` is scheme://host[:port] with one of `schemes`: no user, path, query or
    fragment, a port (if any) in 1-65535."""
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError for a port that is no number in 0-65535
    except ValueError:
        return False
    return not (
        parts.scheme not in schemes
        or not parts.hostname
        or (port is None and parts.netloc.endswith(":"))
        or port == 0
        or "@" in parts.netloc
        or parts.path
        or parts.query
        or parts.fragment
        or "?" in url
        or "#" in url
        or any(c.isspace() for c in url)
    )
