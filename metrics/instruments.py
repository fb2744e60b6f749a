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
TENANTS = Gauge("sqlfleet_tenants", "Tenants in the catalog by state.", ["state"])
