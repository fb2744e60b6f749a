"""Every Prometheus instrument sqlfleet exports. No per-tenant labels, ever (cardinality)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUESTS = Counter(
    "sqlfleet_http_requests_total", "HTTP requests by route and status class.", ["route", "status"]
)
REQUEST_SECONDS = Histogram(
    "sqlfleet_http_request_duration_seconds",
    "HTTP request latency by route.",
    ["route"],
    buckets=_LATENCY_BUCKETS,
)
STATEMENT_SECONDS = Histogram(
    "sqlfleet_statement_duration_seconds", "Time to run one tenant statement.", buckets=_LATENCY_BUCKETS
)
POOL_OPEN = Gauge("sqlfleet_pool_open_handles", "Tenant connections currently open.")
POOL_CAPACITY = Gauge("sqlfleet_pool_capacity", "Configured pool capacity.")
POOL_HITS = Counter("sqlfleet_pool_hits_total", "Leases served by an open connection.")
POOL_MISSES = Counter("sqlfleet_pool_misses_total", "Leases that had to open a connection.")
POOL_EVICTIONS = Counter("sqlfleet_pool_evictions_total", "Connections closed to stay within capacity.")
POOL_OPEN_SECONDS = Histogram(
    "sqlfleet_pool_open_duration_seconds", "Time to open a tenant connection.", buckets=_LATENCY_BUCKETS
)
ADMISSION_WAITING = Gauge(
    "sqlfleet_admission_waiting",
    "Jobs of tenants not open in the pool waiting for one of the runnable_workers slots.",
)
ADMISSION_WAITS = Counter(
    "sqlfleet_admission_waits_total", "Jobs that had to wait for a runnable_workers slot."
)
TENANTS = Gauge("sqlfleet_tenants", "Tenants in the catalog by state.", ["state"])
TENANT_BYTES = Gauge(
    "sqlfleet_tenant_bytes", "Bytes on disk of every tenant database, as the catalog last saw them."
)

_LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0)
BACKUP_LAG_SECONDS = Histogram(
    "sqlfleet_backup_lag_seconds",
    "Time from a commit to its being durable in the replica.",
    buckets=_LAG_BUCKETS,
)
BACKUP_LAG_MAX = Gauge("sqlfleet_backup_lag_max_seconds", "Largest commit-to-replica lag in the last flush.")
BACKUP_BACKLOG_BYTES = Gauge("sqlfleet_backup_backlog_bytes", "Committed WAL bytes not yet in the replica.")
BACKUP_SEGMENTS = Counter("sqlfleet_backup_segments_uploaded_total", "Segment objects uploaded.")
BACKUP_SEGMENT_BYTES = Counter("sqlfleet_backup_uploaded_bytes_total", "Bytes of segment objects uploaded.")
BACKUP_UPLOAD_ERRORS = Counter(
    "sqlfleet_backup_upload_errors_total", "Failed segment uploads (retried later)."
)
BACKUP_UPLOAD_RETRIES = Counter(
    "sqlfleet_backup_upload_retries_total", "Uploads of data an earlier flush failed to upload."
)
BACKUP_SNAPSHOTS = Counter("sqlfleet_backup_snapshots_total", "Snapshots made durable in the replica.")
BACKUP_FLUSH_CPU = Counter(
    "sqlfleet_backup_flush_cpu_seconds_total",
    "CPU time of the shipper's flushes (capture, packing, upload, catalog, checkpoints), succeeded or not.",
)
RESTORES = Counter("sqlfleet_restores_total", "Restores run, by outcome.", ["outcome"])
RESTORE_SECONDS = Histogram(
    "sqlfleet_restore_duration_seconds",
    "Time to restore one tenant.",
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120),
)
RESTORES_RUNNING = Gauge("sqlfleet_restores_in_progress", "Restores running now.")
RESTORE_COMMITS = Counter("sqlfleet_restore_commits_applied_total", "Commits replayed by restores.")
SCHEMA_CATCH_UPS = Counter(
    "sqlfleet_schema_catch_ups_total", "Tenants opened behind their group's schema, by outcome.", ["outcome"]
)
ROLLOUT_TENANTS = Counter(
    "sqlfleet_rollout_tenants_total", "Tenants handled by schema rollouts, by outcome.", ["outcome"]
)
DISK_FULL = Counter(
    "sqlfleet_disk_full_total",
    "Operations that failed because the data disk is full: requests answered HTTP 507, backup "
    "flushes that could not write locally.",
    ["where"],
)
for _where in ("request", "backup"):  # exported at zero from the start, so alerts and panels see them
    DISK_FULL.labels(_where)
LIMIT_REFUSALS = Counter(
    "sqlfleet_limit_refusals_total",
    "Requests or writes refused because a bound was reached, by bound (no tenant label).",
    ["limit"],
)
