"""Settings: one frozen dataclass, read from `SQLFLEET_<NAME>` and CLI flags (flags win).

Every field carries its documentation in `metadata["help"]`; `sqlfleet serve --help` and the
README's settings table are generated from it, and a test checks both stay complete.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from backups.keyring import Keyring
from backups.shipper import ShipperConfig
from cluster.config import ClusterConfig
from router.context import RouterConfig
from router.proxy.forward import ProxyConfig
from tenants.changes import FeedConfig
from tenants.checkpointer import WalConfig
from tenants.config import DbConfig, PoolConfig
from tenants.errors import BadRequest

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

ENV_PREFIX = "SQLFLEET_"
# The longest any seconds setting may be (about 31 years): past it waits overflow the OS's timers.
MAX_SECONDS = 1e9
MAX_ACK_WINDOW = 1.0  # seconds: every response under ack=replica may wait this long more
MIN_ACK_WINDOW = 0.001  # seconds, unless 0 (no gathering): a shorter one only spins the shipper
# The least a positive seconds setting may be; those not named here: MIN_SECONDS. A loop's interval
# shorter than 10 ms spins a thread; a request timeout under 0.1 s fails ordinary requests.
MIN_SECONDS = 0.001
MIN_SECONDS_OF = {
    "request_timeout": 0.1,
    "backup_flush_interval": 0.01,
    "backup_snapshot_interval": 0.01,
    "backup_catalog_upload_interval": 0.01,
    "changes_heartbeat": 0.01,
}
# The most a whole-number setting may be; those not named here: MAX_COUNT, or MAX_BYTES for a
# `*_bytes` one. Past these a setting only exhausts memory, threads or file descriptors.
MAX_COUNT = (1 << 31) - 1
MAX_BYTES = 1 << 50  # 1 PiB (SQLite's own largest database is about 2**48 bytes)
MAX_INT_OF = {
    "worker_threads": 1024,
    "runnable_workers": 1024,
    "pool_capacity": 1 << 20,
    "max_queued_per_tenant": 1 << 20,
    "max_streams": 1 << 20,
    "max_streams_per_tenant": 1 << 20,
    "max_websockets": 1 << 20,
    "changes_max_subscribers": 1 << 20,
    "changes_max_subscribers_per_tenant": 1 << 20,
    "max_transfers": 1024,
    "rollout_concurrency": 1024,
    "cache_size_kib": 1 << 24,  # 16 GiB per connection
    "max_token_ttl": int(1e9),  # seconds, as MAX_SECONDS
    # a dead node's slots wait out its lease before takeover: past an hour there is no failover
    # (etcd itself refuses a TTL above 9e9 s)
    "cluster_lease_ttl": 3600,
}
# Keep-alive connections a cluster node holds to the other nodes, in all (router.proxy).
PROXY_CONNECTIONS = 256
Section = TypeVar("Section", bound="DataclassInstance")


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "sqlfleet"


def _doc(text: str, default: str | None = None) -> dict[str, str]:
    """A field's metadata: its help, and how its default reads when it is computed."""
    return {"help": text} if default is None else {"help": text, "default": default}


@dataclass(frozen=True)
class Settings:
    data_dir: Path = field(
        default_factory=_default_data_dir,
        metadata=_doc(
            "Directory holding tenant files, the catalog and the keys. The admin commands read "
            "DATA_DIR/admin.key from the same default when no key is given.",
            default="$XDG_DATA_HOME/sqlfleet, else ~/.local/share/sqlfleet",
        ),
    )
    host: str = field(default="127.0.0.1", metadata=_doc("Address to listen on."))
    port: int = field(default=8080, metadata=_doc("Port to listen on."))
    admin_key: str | None = field(
        default=None,
        metadata=_doc("Admin API key. Unset: generated on first start into DATA_DIR/admin.key and printed."),
    )
    signing_key_file: Path | None = field(
        default=None,
        metadata=_doc(
            "PEM file of the Ed25519 key that signs tenant tokens. Unset: DATA_DIR/signing-key.pem, "
            "generated on first start."
        ),
    )
    pool_capacity: int = field(
        default=1000,
        metadata=_doc(
            "Tenant connections kept open (LRU). Each idle one costs ~100-150 KiB and 2 file descriptors."
        ),
    )
    worker_threads: int = field(default=16, metadata=_doc("Threads that run SQLite work off the event loop."))
    runnable_workers: int = field(
        default=2,
        metadata=_doc(
            "Requests for tenants not open in the pool that may run at once (opening one is CPU "
            "work with many GIL hand-offs: fewer threads competing switch less); the others wait, "
            "holding no thread, until one ends, is about to commit (its fsync comes next) or has "
            "run 5 ms. Requests for open tenants never wait for it. 0: no limit."
        ),
    )
    max_queued_per_tenant: int = field(
        default=256,
        metadata=_doc(
            "Requests for one tenant that may wait for it at once (its statements run one at a "
            "time); past it the tenant answers HTTP 503 at once, so one hot tenant cannot hold every "
            "worker thread."
        ),
    )
    synchronous: str = field(
        default="FULL",
        metadata=_doc("SQLite synchronous mode for tenant databases: FULL (durable on ack) or NORMAL."),
    )
    cache_size_kib: int = field(default=256, metadata=_doc("SQLite page cache per tenant connection, KiB."))
    statement_timeout: float = field(
        default=2.0, metadata=_doc("Seconds one statement may run before it is interrupted (HTTP 504).")
    )
    request_timeout: float = field(
        default=10.0,
        metadata=_doc(
            "Seconds all statements of one request (a REST batch, a Hrana pipeline or cursor) may "
            "run together; the rest do not run: HTTP 504 (request_time_limit) for REST, an error "
            "result per remaining step or request for Hrana."
        ),
    )
    heavy_worker_seconds: float = field(
        default=1.0,
        metadata=_doc(
            "Worker-thread seconds a tenant may have used lately (decaying over fair_share_window) "
            "before its requests run in the heavy lane: worker_threads/2 threads of their own at a "
            "lower OS priority, so slow tenants never hold the threads everyone else needs."
        ),
    )
    fair_share_window: float = field(
        default=10.0,
        metadata=_doc("Seconds over which a tenant's worker time decays (by e) for heavy_worker_seconds."),
    )
    fair_share_grace: float = field(
        default=0.1,
        metadata=_doc(
            "Seconds of each request's worker time that do not count towards heavy_worker_seconds: "
            "a tenant's requests run one at a time, so many quick ones deny nobody a thread, and "
            "they slow down when slow tenants keep the server busy, which must not send them to "
            "the heavy lane to wait behind those very tenants. Only long requests make a tenant heavy."
        ),
    )
    max_sql_length: int = field(default=100_000, metadata=_doc("Longest SQL text accepted, bytes."))
    max_result_rows: int = field(default=10_000, metadata=_doc("Most rows one result may carry."))
    max_result_bytes: int = field(default=8 << 20, metadata=_doc("Largest result, bytes (approximate)."))
    max_like_pattern_length: int = field(
        default=100,
        metadata=_doc(
            "Longest LIKE/GLOB pattern, bytes. One match costs up to value length x pattern length in one "
            "uninterruptible step: 100 bytes over the largest value (8 MB) is ~0.7 s here."
        ),
    )
    max_request_result_bytes: int = field(
        default=8 << 20,
        metadata=_doc(
            "Largest results of one request across all its statements, bytes as the response's JSON "
            "holds them (base64, escapes): HTTP 413 (results_too_large) for REST, an error result "
            "for Hrana."
        ),
    )
    max_inflight_result_bytes: int = field(
        default=128 << 20,
        metadata=_doc(
            "Memory all requests in flight may hold for results together (being built or sent), "
            "counted as 3x each result's JSON size; past it HTTP 503 (server_busy) with Retry-After."
        ),
    )
    max_db_bytes: int = field(default=1 << 30, metadata=_doc("Largest tenant database, bytes."))
    max_wal_bytes: int = field(
        default=512 << 20,
        metadata=_doc(
            "Largest a tenant's WAL file may be, bytes: a write committing while it is larger gets "
            "HTTP 429 (wal_full) and is rolled back, until the WAL is checkpointed (with backups, "
            "once shipped). Without backups a WAL is checkpointed right after the commit that takes "
            "it to backup_checkpoint_frames."
        ),
    )
    max_body_bytes: int = field(default=4 << 20, metadata=_doc("Largest request body, bytes (HTTP 413)."))
    max_import_bytes: int = field(
        default=1 << 30,
        metadata=_doc(
            "Largest SQLite file PUT /v1/admin/tenants/{id}/import takes, bytes (HTTP 413 "
            "import_too_large, checked while it streams in); the file must also fit max_db_bytes."
        ),
    )
    max_transfers: int = field(
        default=4,
        metadata=_doc(
            "Exports, dumps and imports running at once (each holds a temporary copy of up to "
            "max_db_bytes in the data dir); past it HTTP 429 (transfers_busy) with Retry-After."
        ),
    )
    transfer_timeout: float = field(
        default=3600.0,
        metadata=_doc(
            "Seconds one export, dump or import may take from start to end, copy and transfer "
            "together (these stream far more than request_timeout allows); past it the response is "
            "cut off (export, dump) or HTTP 408 (import)."
        ),
    )
    transfer_idle_timeout: float = field(
        default=60.0,
        metadata=_doc(
            "Seconds an export or dump waits for the client to take one piece, and an import for "
            "the next piece of its upload; past it the transfer stops and its temporary file goes."
        ),
    )
    export_step_pages: int = field(
        default=1024,
        metadata=_doc(
            "Pages an export copies per step while holding the tenant (4 MiB at 4 KiB pages, a few "
            "milliseconds): the longest a writer waits for an export."
        ),
    )
    export_max_restarts: int = field(
        default=3,
        metadata=_doc(
            "Times an export starts its copy again because the tenant's connection closed between "
            "steps (eviction, preemption); after that the rest is copied in one step."
        ),
    )
    import_check_timeout: float = field(
        default=120.0,
        metadata=_doc("Seconds the integrity check of an imported file may take (HTTP 400 past it)."),
    )
    body_timeout: float = field(
        default=30.0,
        metadata=_doc(
            "Seconds a client may take to send a whole request body, from the request's start; past "
            "it HTTP 408 and the connection is closed (a slowly dribbled body holds nothing longer)."
        ),
    )
    max_batch_statements: int = field(
        default=1000,
        metadata=_doc(
            "Most statements in one batch (REST /batch, a Hrana batch or cursor) and requests in one "
            "Hrana pipeline. A Hrana batch may also hold up to 5 BEGIN/COMMIT/ROLLBACK and PRAGMA "
            "foreign_keys steps, which the official clients wrap around the statements of "
            "batch() and migrate()."
        ),
    )
    max_token_ttl: int = field(
        default=365 * 86400, metadata=_doc("Longest lifetime a minted tenant token may have, seconds.")
    )
    busy_timeout: float = field(
        default=5.0,
        metadata=_doc(
            "Seconds a request waits for a tenant held by an open (Hrana) transaction before it "
            "gets HTTP 503 with Retry-After."
        ),
    )
    preempt_wait: float = field(
        default=5.0,
        metadata=_doc(
            "Seconds an admin operation (delete, restore in place, a migration, shutdown) waits for "
            "a Hrana transaction holding the tenant before it preempts it: the transaction is rolled "
            "back and its stream answers STREAM_EXPIRED saying why."
        ),
    )
    stream_idle_timeout: float = field(
        default=10.0,
        metadata=_doc(
            "Seconds a Hrana stream (baton) may stay idle before it expires and its open "
            "transaction is rolled back."
        ),
    )
    max_streams_per_tenant: int = field(
        default=100, metadata=_doc("Most Hrana streams open at once for one tenant (HTTP 429 past it).")
    )
    max_streams: int = field(
        default=10_000, metadata=_doc("Most Hrana streams open at once on this server (HTTP 503 past it).")
    )
    max_websockets: int = field(
        default=1000,
        metadata=_doc(
            "Most Hrana WebSocket connections open at once on this server (past it the upgrade gets HTTP "
            "503). A connection's messages are at most max_body_bytes each (close 1009 past it), and "
            "those it has in flight at most about max_body_bytes together; its streams count against "
            "max_streams_per_tenant and max_streams."
        ),
    )
    base_domain: str | None = field(
        default=None,
        metadata=_doc(
            "Serve Hrana at the root of {tenant}.BASE_DOMAIN too, tenant taken from the Host header "
            "(as libsql-server does). Unset: only the path form and the token's tenant."
        ),
    )
    replica_url: str | None = field(
        default=None,
        metadata=_doc(
            "Where backups go: s3://BUCKET/PREFIX, file:///PATH or a plain path. Unset: "
            "file://DATA_DIR/replica, a local directory (restores mistakes, not a lost disk)."
        ),
    )
    s3_endpoint_url: str | None = field(
        default=None,
        metadata=_doc(
            "S3 API endpoint for an s3:// replica_url; unset for AWS. E.g. http://minio:9000 or "
            "https://ACCOUNT.r2.cloudflarestorage.com. Credentials come from the standard AWS "
            "environment and config (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, roles)."
        ),
    )
    s3_region: str | None = field(
        default=None,
        metadata=_doc("Region of the s3:// bucket. Unset: from the AWS config (R2 takes 'auto')."),
    )
    s3_force_path_style: bool = field(
        default=False,
        metadata=_doc(
            "Address the bucket as ENDPOINT/BUCKET instead of BUCKET.ENDPOINT (MinIO and most "
            "self-hosted S3 need this): true or false."
        ),
    )
    backups: bool = field(
        default=True,
        metadata=_doc("Ship every tenant's WAL to the replica (true or false). Off: no backups, no restore."),
    )
    backup_flush_interval: float = field(
        default=1.0,
        metadata=_doc(
            "Seconds between flushes: each packs all dirty tenants' new commits into one segment object."
        ),
    )
    backup_retention: float = field(
        default=7 * 86400.0,
        metadata=_doc(
            "Seconds of history kept restorable (snapshots and segments older than needed are deleted)."
        ),
    )
    backup_snapshot_interval: float = field(
        default=86400.0,
        metadata=_doc("Seconds after which a tenant that changed gets a new snapshot (bounds restore time)."),
    )
    backup_snapshot_bytes: int = field(
        default=64 << 20,
        metadata=_doc("WAL bytes shipped since the last snapshot after which a tenant gets a new snapshot."),
    )
    backup_checkpoint_frames: int = field(
        default=1000,
        metadata=_doc("WAL frames after which a tenant's fully shipped WAL is checkpointed and truncated."),
    )
    backup_segment_max_bytes: int = field(
        default=64 << 20, metadata=_doc("A flush splits into several segment objects only past this size.")
    )
    backup_max_backlog_bytes: int = field(
        default=256 << 20,
        metadata=_doc(
            "Unshipped WAL bytes one tenant may accumulate while the replica is unreachable; past it "
            "its requests get HTTP 503 until the backlog drains."
        ),
    )
    backup_spool_bytes: int = field(
        default=8 << 20,
        metadata=_doc(
            "Memory the shipper may use for a segment being built, and for snapshot copies "
            "waiting to ship, bytes (at most about 3 times this in all); past it they go to "
            "temporary files under DATA_DIR/system/spool, whatever one commit's or tenant's size."
        ),
    )
    backup_encryption_key_file: Path | None = field(
        default=None,
        metadata=_doc(
            "File of AES-256 keys that encrypt every backup object before it leaves the server: one "
            "`KEYID:BASE64KEY` line per key (32 random bytes, e.g. `k1:$(openssl rand -base64 32)`); "
            "the first seals new objects, the others keep older ones readable until `sqlfleet backups "
            "rekey`. Read at start. Unset: backups are not encrypted."
        ),
    )
    backup_tenant_quota_bytes: int = field(
        default=1 << 30,
        metadata=_doc(
            "Compressed bytes one tenant's commits and snapshots may add to the replica within "
            "backup_tenant_quota_window; past it its writes get HTTP 429 (replica_quota_exceeded, "
            "Retry-After) until enough ages out, so one tenant's churn cannot fill the bucket."
        ),
    )
    backup_tenant_quota_window: float = field(
        default=3600.0, metadata=_doc("Seconds of the rolling window backup_tenant_quota_bytes counts.")
    )
    backup_unready_after: float = field(
        default=60.0,
        metadata=_doc(
            "Seconds a commit may wait for the replica (flushes failing, or not keeping up) before "
            "/readyz answers 503, naming why (the last flush error, e.g. a full disk)."
        ),
    )
    backup_catalog_upload_interval: float = field(
        default=300.0,
        metadata=_doc(
            "Cluster mode: seconds between uploads of this node's backup catalog (a copy of "
            "backups.db, compressed and sealed, and once more at a clean stop), so a node taking "
            "over after its death reads the catalog plus the segments shipped since, never all of them."
        ),
    )
    ack: str = field(
        default="local",
        metadata=_doc(
            "When a response is sent: `local` once its commits are durable on this server's disk "
            "(a lost disk loses at most about backup_flush_interval of acknowledged writes); "
            "`replica` once they are in a segment durably in the replica, and a read once the data "
            "it saw is (nothing acknowledged is lost with the disk; past the request deadline HTTP "
            "503 replica_unavailable, the write's outcome unknown). `replica` needs backups on."
        ),
    )
    ack_window: float = field(
        default=0.02,
        metadata=_doc(
            "ack=replica: seconds a flush that a waiting response asked for gathers other "
            "commits first, so one segment acknowledges them all (group commit). 0, or from 0.001 "
            "to 1, and less than request_timeout."
        ),
    )
    max_unshipped_age: float | None = field(
        default=None,
        metadata=_doc(
            "Seconds a tenant's oldest commit may wait for the replica before its writes get HTTP "
            "503 (replica_behind, rolled back; reads go on) until shipping catches up; 0: never. "
            "Unset: 30 on a cluster node (cluster_etcd), 0 on a single server."
        ),
    )
    lazy_catch_up: bool = field(
        default=True,
        metadata=_doc(
            "Migrate a tenant that is behind its schema group's released head before its next "
            "request: when it is opened, and when the head moves while it is open (true or false)."
        ),
    )
    migration_timeout: float = field(
        default=60.0,
        metadata=_doc(
            "Seconds one statement of a tenant's migration, or one server-internal statement on "
            "tenant data (bookkeeping, schema reads), may run; its requests wait meanwhile "
            "(bounded by busy_timeout)."
        ),
    )
    rollout_concurrency: int = field(
        default=4,
        metadata=_doc(
            "Tenants a schema rollout migrates at once, unless the rollout says otherwise (each "
            "uses a thread; more hides fsync latency, but the threads contend for the GIL: 4 "
            "migrated 1,210 tenants/s on a 2-core machine with a local disk, 16 only 800). Raise "
            "it where fsync is slow (network disks); fewer leaves more room for requests."
        ),
    )
    changes_buffer_bytes: int = field(
        default=1 << 20,
        metadata=_doc(
            "Change feed (GET /v1/tenants/{t}/changes): bytes of recent events kept in memory per "
            "tenant, only for tenants with subscribers (and changes_linger after the last left); a "
            "subscriber further behind gets a `resync` event. At most about "
            "changes_max_subscribers x this in all."
        ),
    )
    changes_max_txn_bytes: int = field(
        default=256 << 10,
        metadata=_doc(
            "Change feed: largest one transaction's changes may be, bytes (rows as read back after "
            "the commit); a larger one is announced by a `resync` event instead. At most "
            "changes_buffer_bytes."
        ),
    )
    changes_max_subscribers: int = field(
        default=256,
        metadata=_doc(
            "Change feed subscribers on this server at once (HTTP 503 past it); also the most "
            "tenants whose recent events are kept."
        ),
    )
    changes_max_subscribers_per_tenant: int = field(
        default=100,
        metadata=_doc("Change feed subscribers of one tenant at once (HTTP 429 past it)."),
    )
    changes_heartbeat: float = field(
        default=15.0,
        metadata=_doc(
            "Seconds between `heartbeat` events of an idle change feed stream; a subscriber that "
            "takes no data for twice this long is disconnected."
        ),
    )
    changes_linger: float = field(
        default=60.0,
        metadata=_doc(
            "Seconds a tenant's change feed events are kept after its last subscriber left, so a "
            "client reconnecting with Last-Event-ID misses nothing."
        ),
    )
    cluster_etcd: str | None = field(
        default=None,
        metadata=_doc(
            "etcd client URLs of the cluster this node joins, comma-separated "
            "(http://10.0.0.1:2379,http://10.0.0.2:2379). Unset: no cluster, one node on its own."
        ),
    )
    cluster_name: str = field(
        default="sqlfleet",
        metadata=_doc("Name of the cluster: its keys in etcd live under /sqlfleet/CLUSTER_NAME/."),
    )
    node_id: str | None = field(
        default=None,
        metadata=_doc(
            "This node's id in the cluster, unique and stable across restarts. Unset: the host name. "
            "A start with the id of a live node is refused (exit 2) after waiting up to two lease "
            "TTLs for it to go; a restart over this data dir's own registration joins at once."
        ),
    )
    node_url: str | None = field(
        default=None,
        metadata=_doc(
            "URL at which the other nodes reach this one, http(s)://host[:port]. Unset: "
            "http://HOST:PORT, so HOST must then be an address they can reach (not 0.0.0.0)."
        ),
    )
    cluster_lease_ttl: int = field(
        default=10,
        metadata=_doc(
            "Seconds this node's etcd lease lives without a keep-alive (sent every TTL/4): a node "
            "that cannot renew it stops serving its slots before it runs out, and another may "
            "then claim them."
        ),
    )
    cluster_takeover_grace: float = field(
        default=30.0,
        metadata=_doc(
            "Seconds a node that left the cluster without handing its slots over (its lease ran "
            "out: killed, paused, cut off) keeps them: a restarted node with its data dir comes "
            "back in time, ships its unshipped commits and keeps its tenants. After it, the "
            "controller takes the node over: fences its segments, hands its tenants to the other "
            "nodes through the replica (they restore each on first access), and reassigns its slots."
        ),
    )
    log_level: str = field(default="info", metadata=_doc("Log level: debug, info, warning, error."))
    log_format: str = field(
        default="text",
        metadata=_doc(
            "Log lines as `text` or `json` (one JSON object per line, for log shippers). Either way "
            "one access line per request: request id (also the X-Request-Id header), tenant, route, "
            "status, duration."
        ),
    )
    shutdown_timeout: float = field(
        default=25.0,
        metadata=_doc(
            "Seconds from SIGTERM to exit: in-flight requests finish, the remaining WAL is shipped, "
            "open tenants are checkpointed and closed. Keep it below Kubernetes' "
            "terminationGracePeriodSeconds (the chart uses 30)."
        ),
    )

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then `SQLFLEET_*` variables, then non-None `overrides`.
        Raises BadRequest naming the setting whose value does not parse."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = overrides.get(f.name)
            if raw is None:
                raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _parse(f.name, str(f.type), raw)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        for f in fields(self):  # every float setting is seconds: nan, inf or 1e400 would never end
            value = getattr(self, f.name)
            if (
                str(f.type).startswith("float")
                and value is not None
                and not (math.isfinite(value) and abs(value) <= MAX_SECONDS)
            ):
                raise BadRequest(f"{f.name} must be a finite number of seconds, at most {MAX_SECONDS:g}")
            if str(f.type).startswith("int") and value is not None:
                most = MAX_INT_OF.get(f.name, MAX_BYTES if f.name.endswith("_bytes") else MAX_COUNT)
                if value > most:
                    raise BadRequest(f"{f.name} must be at most {most}")
        if not 0 <= self.port <= 65535:
            raise BadRequest("port must be from 0 to 65535")
        if self.synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise BadRequest(f"synchronous must be FULL or NORMAL, not {self.synchronous!r}")
        for name in (
            "pool_capacity",
            "worker_threads",
            "max_queued_per_tenant",
            "max_sql_length",
            "max_result_rows",
            "max_result_bytes",
            "max_like_pattern_length",
            "max_request_result_bytes",
            "max_inflight_result_bytes",
            "max_db_bytes",
            "max_wal_bytes",
            "backup_tenant_quota_bytes",
            "max_body_bytes",
            "max_batch_statements",
            "max_streams_per_tenant",
            "max_streams",
            "max_websockets",
            "rollout_concurrency",
            "backup_spool_bytes",  # 0 would mean "never spill" to tempfile.SpooledTemporaryFile
            "changes_buffer_bytes",
            "changes_max_txn_bytes",
            "changes_max_subscribers",
            "changes_max_subscribers_per_tenant",
            "max_import_bytes",
            "max_transfers",
            "export_step_pages",
            "cluster_lease_ttl",
            "max_token_ttl",
            "backup_snapshot_bytes",
            "backup_checkpoint_frames",
            "backup_segment_max_bytes",
            "backup_max_backlog_bytes",
        ):
            if getattr(self, name) < 1:
                raise BadRequest(f"{name} must be at least 1")
        for name in (
            "statement_timeout",
            "request_timeout",
            "heavy_worker_seconds",
            "fair_share_window",
            "busy_timeout",
            "preempt_wait",
            "body_timeout",
            "stream_idle_timeout",
            "backup_flush_interval",
            "backup_retention",
            "backup_snapshot_interval",
            "backup_tenant_quota_window",
            "backup_unready_after",
            "backup_catalog_upload_interval",
            "migration_timeout",
            "shutdown_timeout",
            "changes_heartbeat",
            "transfer_timeout",
            "transfer_idle_timeout",
            "import_check_timeout",
        ):
            least = MIN_SECONDS_OF.get(name, MIN_SECONDS)
            if getattr(self, name) <= 0:
                raise BadRequest(f"{name} must be positive (at least {least:g} s)")
            if getattr(self, name) < least:
                raise BadRequest(f"{name} must be at least {least:g} s")

        if self.changes_max_txn_bytes > self.changes_buffer_bytes:
            raise BadRequest("changes_max_txn_bytes must not exceed changes_buffer_bytes")
        for name in ("changes_linger", "cache_size_kib", "export_max_restarts"):
            if getattr(self, name) < 0:
                raise BadRequest(f"{name} must not be negative")
        if self.cluster_takeover_grace < 0:
            raise BadRequest("cluster_takeover_grace must not be negative")
        if self.fair_share_grace < 0:
            raise BadRequest("fair_share_grace must not be negative")
        if self.runnable_workers < 0:
            raise BadRequest("runnable_workers must not be negative (0: no limit)")
        if self.ack not in ("local", "replica"):
            raise BadRequest(f"ack must be local or replica, not {self.ack!r}")
        if self.ack == "replica" and not self.backups:
            raise BadRequest("ack=replica needs backups on: it waits for commits to reach the replica")
        if self.ack_window < 0 or (self.max_unshipped_age or 0) < 0:
            raise BadRequest("ack_window and max_unshipped_age must not be negative")
        if 0 < self.ack_window < MIN_ACK_WINDOW:
            raise BadRequest(f"ack_window must be 0 or at least {MIN_ACK_WINDOW:g} s")
        if self.ack_window > MAX_ACK_WINDOW or self.ack_window >= self.request_timeout:
            raise BadRequest(
                f"ack_window must be at most {MAX_ACK_WINDOW:g} s and less than request_timeout "
                f"({self.request_timeout:g} s): every acknowledged write waits up to it"
            )
        if self.log_format not in ("text", "json"):
            raise BadRequest(f"log_format must be text or json, not {self.log_format!r}")
        self.cluster_config()  # its checks (node_id, cluster_name, node_url) are the settings' too

    def replica_target(self) -> str:
        """`replica_url`, or the embedded default: a directory under the data dir."""
        return self.replica_url or (self.data_dir / "replica").absolute().as_uri()

    # The sub-configs below have no defaults of their own: every number lives in a field above.

    def db_config(self) -> DbConfig:
        return self._section(DbConfig, synchronous=self.synchronous.upper())

    def pool_config(self) -> PoolConfig:
        return PoolConfig(
            capacity=self.pool_capacity, busy_timeout=self.busy_timeout, preempt_wait=self.preempt_wait
        )

    def wal_config(self) -> WalConfig:
        return WalConfig(checkpoint_frames=self.backup_checkpoint_frames, max_wal_bytes=self.max_wal_bytes)

    def feed_config(self) -> FeedConfig:
        return self._section(FeedConfig, prefix="changes_")

    def router_config(self) -> RouterConfig:
        return self._section(RouterConfig)

    def shipper_config(self) -> ShipperConfig:
        age = self.max_unshipped_age
        if age is None:
            age = 30.0 if self.cluster_etcd else 0.0
        return self._section(
            ShipperConfig,
            prefix="backup_",
            ack=self.ack,
            ack_window=self.ack_window,
            max_unshipped_age=age,
            delete_flush_wait=self.request_timeout / 4,  # two of them: half the delete's deadline
        )

    def cluster_config(self) -> ClusterConfig | None:
        """How this node joins its cluster; None without `cluster_etcd`. Raises BadRequest."""
        endpoints = tuple(e.strip() for e in (self.cluster_etcd or "").split(",") if e.strip())
        if not endpoints:
            return None
        if self.node_url is None and self.host in ("0.0.0.0", "::", ""):
            raise BadRequest(
                f"node_url must be set when listening on {self.host!r}: other nodes cannot reach that"
            )
        return ClusterConfig(
            endpoints=endpoints,
            name=self.cluster_name,
            node_id=self.node_id or socket.gethostname(),
            node_url=self.node_url or f"http://{url_host(self.host)}:{self.port}",
            lease_ttl=self.cluster_lease_ttl,
            takeover_grace=self.cluster_takeover_grace,
        )

    def proxy_config(self) -> ProxyConfig:
        """How a cluster node forwards to the others (router.proxy): an owner may stay silent
        mid-response as long as a request may run, a change feed between heartbeats, or an
        export between pieces, plus slack; any body up to `max_body_bytes` can be sent again."""
        silence = max(self.request_timeout, 2 * self.changes_heartbeat, self.transfer_idle_timeout)
        return ProxyConfig(
            read_timeout=silence + 5.0,
            connect_timeout=2.0,
            replay_bytes=self.max_body_bytes,
            max_connections=PROXY_CONNECTIONS,
            # the longest an owner may rightly take: wait for its tenant, run, wait for the replica
            answer_timeout=max(self.busy_timeout, self.preempt_wait)
            + self.request_timeout * (2 if self.ack == "replica" else 1)
            + 5.0,
        )

    def backup_keyring(self) -> Keyring | None:
        """The keys of `backup_encryption_key_file`, None when unset. Raises BadRequest."""
        path = self.backup_encryption_key_file
        return Keyring.load(path) if path is not None else None

    def _section(self, config: type[Section], prefix: str = "", **given: Any) -> Section:
        """A sub-config whose every field is the setting of its name after `prefix`, unless `given`."""
        named = {f.name: getattr(self, prefix + f.name) for f in fields(config) if f.name not in given}
        return config(**named, **given)


def _parse(name: str, type_name: str, raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    if type_name == "bool":
        if raw.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if raw.strip().lower() in ("0", "false", "no", "off", ""):
            return False
        raise BadRequest(f"setting {name}: cannot parse {raw!r} as true or false")
    try:
        if type_name.startswith("int"):
            return int(raw)
        if type_name.startswith("float"):
            return float(raw)  # every float setting is seconds; `validate` refuses nan and inf
        if "Path" in type_name:
            return Path(raw).expanduser()
    except ValueError:
        kind = "a whole number" if type_name.startswith("int") else "a number of seconds"
        raise BadRequest(f"setting {name}: cannot parse {raw!r}: expected {kind}") from None
    return raw


def setting_fields() -> list[tuple[str, str, str, str | None]]:
    """(name, type, help, default as text or None when unset) of every setting, for --help and docs."""
    return [(f.name, str(f.type), f.metadata.get("help", ""), _default_text(f)) for f in fields(Settings)]


def _default_text(f: Field[Any]) -> str | None:
    if "default" in f.metadata:  # computed (a default_factory): the field says how it reads
        return str(f.metadata["default"])
    if f.default is MISSING:
        raise TypeError(f"setting {f.name} has a computed default but does not say how it reads")
    return None if f.default is None else str(f.default)


def settings_markdown() -> str:
    """The README's settings table (tests/ops/test_settings.py keeps the README in step)."""
    lines = ["| setting | env | default | meaning |", "|---|---|---|---|"]
    for f in fields(Settings):
        default = _default_text(f)
        shown = "unset" if default is None else f"`{default}`"
        flag, meaning = f"--{f.name.replace('_', '-')}", f.metadata.get("help", "").replace("|", "/")
        lines.append(f"| `{flag}` | `{ENV_PREFIX}{f.name.upper()}` | {shown} | {meaning} |")
    return "\n".join(lines)


def url_host(host: str) -> str:
    """`host` as the host part of a URL: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
