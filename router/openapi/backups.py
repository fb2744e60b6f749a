"""Paths and schemas of backups and restore (router/backups_api.py); 409 when the server runs
without backups (or rekey without encryption keys), 502/503 when the replica fails or cannot be
reached, 500 when a restored file fails its integrity check (a broken backup), or a backup object
is sealed with a key the server lacks or fails authentication (tampered)."""

from __future__ import annotations

from typing import Any

from router.openapi.builders import TENANT_ID, TENANT_PARAM, TIME, json_body, operation, ref

SCHEMAS: dict[str, Any] = {
    "RestoreRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "timestamp": {"type": "string", "description": "RFC 3339, or 'latest'", "default": "latest"},
            "as": {
                **TENANT_ID,
                "nullable": True,
                "description": "restore into this new tenant instead (in a cluster, made on the node "
                "serving its slot, from the source's backups wherever they are)",
            },
        },
    },
    "RestoreResult": {
        "type": "object",
        "required": ["tenant", "restored_to", "generation", "commits_applied"],
        "properties": {
            "tenant": {**TENANT_ID, "description": "the tenant restored into"},
            "restored_to": {**TIME, "description": "time of the last commit applied"},
            "generation": {"type": "string", "description": "backup generation restored from"},
            "commits_applied": {"type": "integer", "description": "commits replayed onto the snapshot"},
        },
    },
    "BackupInfo": {
        "type": "object",
        "required": ["tenant", "earliest", "latest", "generations", "snapshots", "deleted", "backlog_bytes"],
        "properties": {
            "tenant": TENANT_ID,
            "earliest": {**TIME, "nullable": True, "description": "earliest restorable moment"},
            "latest": {**TIME, "description": "latest restorable moment (last shipped commit)"},
            "generations": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id", "started"],
                    "properties": {"id": {"type": "string"}, "started": TIME},
                },
            },
            "snapshots": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["generation", "lsn", "taken", "bytes"],
                    "properties": {
                        "generation": {"type": "string"},
                        "lsn": {"type": "integer", "description": "last WAL frame the image includes"},
                        "taken": TIME,
                        "bytes": {"type": "integer", "description": "compressed size"},
                    },
                },
            },
            "deleted": {"type": "boolean", "description": "the tenant's last event is its deletion"},
            "backlog_bytes": {"type": "integer", "description": "committed WAL bytes not yet shipped"},
        },
    },
    "BackupVerify": {
        "type": "object",
        "required": ["tenant", "ok", "pages", "differing_pages", "restored_to"],
        "properties": {
            "tenant": TENANT_ID,
            "ok": {"type": "boolean", "description": "restored file equals the live database"},
            "pages": {"type": "integer", "description": "pages of the live database"},
            "differing_pages": {"type": "array", "items": {"type": "integer"}, "maxItems": 100},
            "restored_to": TIME,
        },
    },
    "BackupRebuild": {
        "type": "object",
        "required": ["segments"],
        "properties": {"segments": {"type": "integer", "description": "segment objects read"}},
    },
    "RekeyRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "after": {
                "type": "string",
                "nullable": True,
                "description": "the previous batch's `next`; null or absent: from the start",
            },
            "limit": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 100},
        },
    },
    "RekeyBatch": {
        "type": "object",
        "required": ["key_id", "total", "checked", "rewritten", "missing", "next"],
        "properties": {
            "key_id": {"type": "string", "description": "the current key, now sealing what was rewritten"},
            "total": {"type": "integer", "description": "segments retention still needs"},
            "checked": {"type": "integer", "description": "segments this batch looked at"},
            "rewritten": {"type": "integer", "description": "objects this batch re-encrypted"},
            "missing": {"type": "integer", "description": "segments in the catalog but not in the bucket"},
            "next": {
                "type": "string",
                "nullable": True,
                "description": "cursor for the next batch; null: done",
            },
        },
    },
    "FleetRestore": {
        "type": "object",
        "required": ["groups", "tenants_to_restore", "tokens", "warning"],
        "properties": {
            "groups": {
                "type": "object",
                "required": ["restored", "present", "failed"],
                "properties": {
                    "restored": {"type": "array", "items": {"type": "string"}, "description": "put back now"},
                    "present": {"type": "array", "items": {"type": "string"}, "description": "already here"},
                    "failed": {
                        "type": "object",
                        "additionalProperties": {"type": "string"},
                        "description": "group -> why its archive was refused",
                    },
                },
            },
            "tenants_to_restore": {"type": "integer", "description": "restorable tenants this server lacks"},
            "tokens": {
                "type": "object",
                "required": ["signing_key", "minted_with", "unknown", "changed_key", "survive", "warning"],
                "properties": {
                    "signing_key": {
                        "type": "string",
                        "nullable": True,
                        "description": "fingerprint of the key this server signs tokens with",
                    },
                    "minted_with": {
                        "type": "array",
                        "items": {"type": "string"},
                        "description": "fingerprints of the keys the old tokens were signed with",
                    },
                    "unknown": {"type": "integer", "description": "tenants with no metadata"},
                    "changed_key": {
                        "type": "integer",
                        "description": "tenants whose tokens were signed with another key",
                    },
                    "survive": {
                        "type": "boolean",
                        "description": "every old token will work after the restore",
                    },
                    "warning": {"type": "string", "nullable": True},
                },
            },
            "warning": {
                "type": "string",
                "nullable": True,
                "description": "set when old tokens will not work after the restore: why, what to do",
            },
        },
    },
    "TenantBackupRows": {
        "type": "object",
        "required": ["tenant", "rows"],
        "properties": {
            "tenant": TENANT_ID,
            "rows": {
                "type": "array",
                "description": "this node's backup catalog rows of the tenant, each an array of its "
                "columns (between cluster nodes: the owner asks the others before restoring a tenant "
                "it lacks)",
                "items": {"type": "array", "items": {}},
            },
            "record": {
                "type": "object",
                "description": "only when the tenant exists on this node: who it is (a restore as "
                "another id on another node keeps its group)",
                "required": ["created", "group", "incarnation", "token_generation", "updated", "deleted"],
                "properties": {
                    "created": {"type": "number"},
                    "group": {"type": "string", "nullable": True},
                    "incarnation": {"type": "string"},
                    "token_generation": {"type": "integer"},
                    "updated": {"type": "number"},
                    "deleted": {"type": "number", "nullable": True},
                },
            },
        },
    },
    "RestorableTenants": {
        "type": "object",
        "required": ["tenants"],
        "properties": {
            "tenants": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id", "exists"],
                    "properties": {"id": TENANT_ID, "exists": {"type": "boolean"}},
                },
            }
        },
    },
}


def paths() -> dict[str, Any]:
    def op(
        summary: str, ok: str, errors: tuple[int, ...], body: str | None = None, tenant: bool = True
    ) -> dict[str, Any]:
        params = [TENANT_PARAM] if tenant else None
        return operation(summary, json_body(ref(ok)), errors, body, params, tag="backups")

    return {
        "/v1/admin/tenants/{tenant}/restore": {
            "post": op(
                "Restore a tenant to a moment, in place or as a new tenant",
                "RestoreResult",
                (400, 401, 403, 404, 409, 413, 500, 502, 503),
                "RestoreRequest",
            )
        },
        "/v1/admin/tenants/{tenant}/backups": {
            "get": op(
                "A tenant's restore points: window, generations, snapshots",
                "BackupInfo",
                (400, 401, 403, 404, 409),
            )
        },
        "/v1/admin/tenants/{tenant}/backups/verify": {
            "post": op(
                "Restore the latest state aside and compare it page by page",
                "BackupVerify",
                (400, 401, 403, 404, 409, 500, 502, 503),
            )
        },
        "/v1/admin/backups/rebuild": {
            "post": op(
                "Rebuild the backup catalog from the replica",
                "BackupRebuild",
                (400, 401, 403, 409, 500, 502, 503),
                tenant=False,
            )
        },
        "/v1/admin/backups/rekey": {
            "post": op(
                "Re-encrypt a batch of backups with the current key (repeat with `next` until null)",
                "RekeyBatch",
                (400, 401, 403, 409, 413, 500, 502, 503),
                "RekeyRequest",
                tenant=False,
            )
        },
        "/v1/admin/backups/tenants": {
            "get": op(
                "Tenants the replica can restore (in a cluster: every live node's)",
                "RestorableTenants",
                (400, 401, 403, 409, 503),
                tenant=False,
            )
        },
        "/v1/admin/backups/tenants/{tenant}": {
            "get": op(
                "This node's backup catalog rows of a tenant (asked between cluster nodes)",
                "TenantBackupRows",
                (400, 401, 403, 409, 503),
            )
        },
        "/v1/admin/backups/fleet/restore": {
            "post": op(
                "Put back the schema groups this server lacks from the fleet metadata (disaster "
                "recovery, before the tenants); says whether old tenant tokens will work here",
                "FleetRestore",
                (400, 401, 403, 409, 500, 502, 503),
                tenant=False,
            )
        },
    }
