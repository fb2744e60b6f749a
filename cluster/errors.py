"""Cluster errors: what etcd said, translated from the client's generic exceptions."""

from __future__ import annotations

from tenants.errors import SqlfleetError


class ClusterError(SqlfleetError):
    """Base of every cluster condition; a request that meets one gets 503 (try again)."""

    status = 503
    code = "cluster_unavailable"


class EtcdUnavailable(ClusterError):
    """No etcd member answered within the per-call timeout (after the retries allowed)."""

    code = "etcd_unavailable"


class EtcdRequestError(ClusterError):
    """etcd refused the request itself (too many operations, bad argument): a bug, never retried."""

    status = 500
    code = "etcd_request_error"


class LeaseNotFound(ClusterError):
    """The lease has expired or was revoked: everything bound to it is gone."""

    code = "lease_lost"


class RevisionCompacted(ClusterError):
    """A watch asked for a revision etcd has compacted away: re-list, then watch again."""

    code = "etcd_revision_compacted"

    def __init__(self, compacted_revision: int) -> None:
        super().__init__(f"revision compacted below {compacted_revision}")
        self.compacted_revision = compacted_revision


class NodeIdInUse(SqlfleetError):
    """Another live node holds this node's id in etcd: joining would take its place (the server
    does not start)."""

    status = 409
    code = "node_id_in_use"


class NotServing(ClusterError):
    """This node cannot prove its lease alive (lost, or etcd unreachable): it serves no slot."""

    code = "node_not_serving"


class ControllerDeposed(ClusterError):
    """A controller write was refused: another node holds the `controller` key now."""

    code = "controller_deposed"
