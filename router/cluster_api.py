"""The cluster as this node sees it (issue 16): `GET /v1/admin/cluster[?tenant=T]`. Admin key.

Answer: `{"node": this node's id, "serving": bool, "reason": why not (or null), "slots_owned":
slots with a live owner (16384 when all are served), "nodes": {id: {"url", "incarnation",
"slots", "draining", "state"}}}` (state "lease_lost": the node holds slots but its lease is gone,
so they are not served; with "assigned_slots", "lease_lost_ago_s", "takeover_in_s"; state "fenced":
the answering node was taken over, it serves nothing until restarted and lists only itself), plus
`"tenant": {"id", "slot", "owner": {"node", "token"} or null}` with `?tenant=`. A server that is
not a cluster node answers 409 `cluster_disabled`.

`POST /v1/admin/cluster/nodes/{node}/drain` marks a node draining: the controller moves its slots
to the other nodes, each a planned move (drained, shipped, handed over); `DELETE` the same path
undoes it. Both answer the cluster status as above, and take no body (an empty one, or `{}`;
any field is 400 `unknown fields`, as on every admin route). Only a running node can be drained
or undrained (409 `node_not_live` otherwise: its tenants move only while it hands them over),
and not the last one that is not draining (409 `no_other_node`: its slots would have nowhere to go;
the mark is an etcd transaction guarded by the other nodes' marks, so of two drains sent at once
for the last two nodes, through any nodes, one is refused).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cluster.config import check_node_id
from router.admin_api import admin_context, optional_body
from tenants.errors import SqlfleetError
from tenants.ids import validate_tenant_id


class ClusterDisabled(SqlfleetError):
    """A cluster route was called on a server that is not a cluster node."""

    status = 409
    code = "cluster_disabled"


async def cluster_status(request: Request) -> JSONResponse:
    c = admin_context(request)
    if c.placement is None:
        raise ClusterDisabled("this server is not a cluster node (start it with --cluster-etcd)")
    tenant = request.query_params.get("tenant")
    return JSONResponse(c.placement.describe(None if tenant is None else validate_tenant_id(tenant)))


async def drain(request: Request) -> JSONResponse:
    c = admin_context(request)
    if c.placement is None:
        raise ClusterDisabled("this server is not a cluster node (start it with --cluster-etcd)")
    node = check_node_id(request.path_params["node"])
    await optional_body(request, c.config.max_body_bytes, set())
    await c.blocking(c.placement.set_draining, node, request.method == "POST")
    return JSONResponse(c.placement.describe(None))


ROUTES = [
    Route("/v1/admin/cluster", cluster_status, methods=["GET"]),
    Route("/v1/admin/cluster/nodes/{node}/drain", drain, methods=["POST", "DELETE"]),
]
