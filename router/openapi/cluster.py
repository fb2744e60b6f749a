"""Paths and schemas of the cluster routes (router/cluster_api.py): the cluster as one node sees
it, and draining a node. In a cluster every tenant route may also answer 421 (to a proxying node
only) and 503 `slot_unowned`/`owner_unreachable` with Retry-After while a slot moves."""

from __future__ import annotations

from typing import Any

from router.openapi.builders import TENANT_ID, json_body, operation, ref

_NODE_ID = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"}

SCHEMAS: dict[str, Any] = {
    "ClusterStatus": {
        "type": "object",
        "required": ["node", "serving", "reason", "slots_owned", "nodes"],
        "properties": {
            "node": _NODE_ID,
            "serving": {"type": "boolean", "description": "this node's etcd lease is provably alive"},
            "reason": {"type": "string", "nullable": True, "description": "why it is not serving"},
            "slots_owned": {"type": "integer", "description": "slots with a live owner, of 16384"},
            "nodes": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "required": ["url", "incarnation", "slots", "draining", "state"],
                    "properties": {
                        "url": {"type": "string", "nullable": True, "description": "null: not known"},
                        "incarnation": {"type": "string", "nullable": True},
                        "slots": {"type": "integer", "description": "slots it serves now"},
                        "draining": {"type": "boolean"},
                        "state": {
                            "type": "string",
                            "enum": ["live", "lease_lost", "fenced"],
                            "description": "lease_lost: it holds slots but no lease (killed, paused, cut "
                            "off): they are not served until it comes back or is taken over; fenced: the "
                            "answering node was taken over and answers 503 node_fenced until restarted",
                        },
                        "assigned_slots": {"type": "integer", "description": "lease_lost: slots it holds"},
                        "lease_lost_ago_s": {
                            "type": "number",
                            "nullable": True,
                            "description": "lease_lost: seconds since this node saw it go (null: before "
                            "this node started)",
                        },
                        "takeover_in_s": {
                            "type": "number",
                            "nullable": True,
                            "description": "lease_lost: seconds of the takeover grace left (0: the "
                            "takeover is due or running)",
                        },
                    },
                },
            },
            "takeovers": {
                "type": "object",
                "description": "departed nodes whose takeover failed so far, with why (tried again)",
                "additionalProperties": {"type": "string"},
            },
            "tenant": {
                "type": "object",
                "description": "with ?tenant=: its slot and owner (null while the slot moves)",
                "properties": {
                    "id": TENANT_ID,
                    "slot": {"type": "integer"},
                    "owner": {
                        "type": "object",
                        "nullable": True,
                        "properties": {"node": _NODE_ID, "token": {"type": "integer"}},
                    },
                },
            },
        },
    },
}


def paths() -> dict[str, Any]:
    node = {"name": "node", "in": "path", "required": True, "schema": _NODE_ID}
    tenant = {"name": "tenant", "in": "query", "schema": TENANT_ID}
    status = json_body(ref("ClusterStatus"))
    drain = "Drain a node: the controller moves its slots to the other nodes (planned moves)"
    return {
        "/v1/admin/cluster": {
            "get": operation(
                "The cluster as this node sees it",
                status,
                (400, 401, 403, 409),
                params=[tenant],
                tag="cluster",
            )
        },
        "/v1/admin/cluster/nodes/{node}/drain": {
            "post": operation(drain, status, (400, 401, 403, 409, 503), params=[node], tag="cluster"),
            "delete": operation(
                "Stop draining a node: it gets its share of slots again",
                status,
                (400, 401, 403, 409, 503),
                params=[node],
                tag="cluster",
            ),
        },
    }
