"""The admin API's answers as the `AdminClient` returns them (DESIGN.md "Admin API"): JSON
objects, typed. The server owns the shapes; these name the fields the CLI reads."""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

# -- tenants and tokens ----------------------------------------------------------------------------


class TenantInfo(TypedDict):
    id: str
    created_at: str
    state: str
    group: str | None
    size: int  # bytes on disk, WAL included, measured when asked (info, list)
    error: str | None
    path: NotRequired[str]  # the tenant's file on the server: in `tenant_info` only


class TenantPage(TypedDict):
    tenants: list[TenantInfo]
    next: str | None


class MintedToken(TypedDict):
    token: str
    tenant: str
    access: str
    expires_at: int


class RevokedTokens(TypedDict):
    tenant: str
    revoked_at: str


# -- data in and out ---------------------------------------------------------------------------------


class Imported(TypedDict):
    bytes: int
    page_size: int
    replaced: bool
    schema_steps: int  # schema changes made to join the tenant's group


class ImportResult(TenantInfo):
    imported: Imported


class Transferred(TypedDict):
    """What an export or dump wrote: bytes, and the moment the copy was consistent at."""

    bytes: int
    consistent_at: str


# -- backups -----------------------------------------------------------------------------------------


class RestoreResult(TypedDict):
    tenant: str
    restored_to: str
    generation: str
    commits_applied: int


class BackupGeneration(TypedDict):
    id: str
    started: str


class BackupSnapshot(TypedDict):
    generation: str
    lsn: int
    taken: str
    bytes: int


class BackupInfo(TypedDict):
    tenant: str
    earliest: str | None
    latest: str
    generations: list[BackupGeneration]
    snapshots: list[BackupSnapshot]
    deleted: bool
    backlog_bytes: int


class VerifyResult(TypedDict):
    tenant: str
    ok: bool
    pages: int
    differing_pages: list[int]
    restored_to: str


class RestorableTenant(TypedDict):
    id: str
    exists: bool
    deleted: NotRequired[str | None]  # when it was deleted (listed only when asked for); else None


class GroupsRestored(TypedDict):
    restored: list[str]
    present: list[str]
    failed: dict[str, str]


class TokenCheck(TypedDict):
    signing_key: str | None
    minted_with: list[str]
    unknown: int
    changed_key: int
    survive: bool
    warning: str | None


class FleetRestore(TypedDict):
    groups: GroupsRestored
    tenants_to_restore: int
    tokens: TokenCheck
    warning: str | None


class RekeyBatch(TypedDict):
    key_id: str
    total: int
    checked: int
    rewritten: int
    missing: int
    next: str | None


# -- schema groups, migrations, rollouts ----------------------------------------------------------


class Migration(TypedDict):
    name: str
    kind: str  # "sql", "sync" or "alembic"
    checksum: str
    allow_drop: bool
    released: NotRequired[bool]  # in a group's listing, not in a registration's answer
    alembic_revision: NotRequired[str]
    alembic_source_sha256: NotRequired[str]


class GroupInfo(TypedDict):
    name: str
    migrations: list[Migration]
    released: int  # how many of `migrations` the template has
    head: NotRequired[str | None]  # the last of them
    pending: int
    tables: NotRequired[list[str]]  # the template's
    rollout: NotRequired[Rollout | None]  # the newest, as listed


class SyncPlan(TypedDict):
    sql: str
    blocked: list[Any]
    kept: list[Any]


class AppliedMigration(TypedDict):
    name: str
    checksum: str
    applied_at: str


class TenantMigrations(TypedDict):
    tenant: str
    group: str
    applied: list[AppliedMigration]
    released: int
    pending: list[str] | None  # None when the tenant's history disagrees with the group's
    error: str | None


class RolloutFailure(TypedDict):
    tenant: str
    error: str


class RolloutPlan(TypedDict):
    sql: str
    tenants: int


class Rollout(TypedDict):
    """A rollout's snapshot. A listing (`AdminClient.rollouts`) leaves out failures, plans and
    migrated_tenants. Rollouts recorded by an older server lack the NotRequired fields."""

    id: str
    group: str
    state: str  # running, completed, stopped, failed, interrupted, aborted
    reason: str | None
    dry_run: NotRequired[bool]  # its counts say what would happen
    options: dict[str, Any]
    target: NotRequired[str | None]  # the last migration it rolls out
    template: dict[str, Any]  # applied, tried_only (false once released)
    resumed: NotRequired[int]
    migrated_tenants: NotRequired[list[str]]
    total: int
    migrated: int
    current: int
    gone: int
    failed: int
    done: int
    remaining: int
    elapsed_s: float
    rate_per_s: float
    eta_s: float | None
    started_at: str
    finished_at: str | None
    failures: NotRequired[list[RolloutFailure]]
    plans: NotRequired[list[RolloutPlan]]
    nodes: NotRequired[dict[str, dict[str, Any]]]  # cluster: each node's part
    unowned_slots: NotRequired[int]  # cluster: slots without an owner now


# -- the server as a whole ---------------------------------------------------------------------------


class Readiness(TypedDict):
    """GET /readyz: `ready` with every check, and the replica's state when backups are on."""

    ready: bool
    checks: dict[str, bool]
    replica: NotRequired[dict[str, Any]]


class ClusterNodeInfo(TypedDict):
    url: str | None
    incarnation: str | None
    slots: int
    draining: bool
    state: str  # "live" | "lease_lost" (then also the three below) | "fenced" (the node answering)
    assigned_slots: NotRequired[int]
    lease_lost_ago_s: NotRequired[float | None]
    takeover_in_s: NotRequired[float | None]


class ClusterStatus(TypedDict, total=False):
    """GET /v1/admin/cluster (router.cluster_api)."""

    node: str
    serving: bool
    reason: str | None
    slots_owned: int
    nodes: dict[str, ClusterNodeInfo]
    takeovers: dict[str, str]  # departed node -> why its takeover is not done
    tenant: dict[str, Any]
