"""What the tenants layer needs to know, built by `ops.settings.Settings` (the defaults live
there, once; these have none of their own)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DbConfig:
    """Per-connection pragmas and the sandbox's limits."""

    synchronous: str
    cache_size_kib: int
    max_db_bytes: int  # the main file, and separately the TEMP tables
    max_sql_length: int
    statement_timeout: float
    max_result_rows: int
    max_result_bytes: int  # also bounds any single value (SQLITE_LIMIT_LENGTH)
    max_like_pattern_length: int  # SQLITE_LIMIT_LIKE_PATTERN_LENGTH: bounds one LIKE/GLOB step


@dataclass(frozen=True)
class PoolConfig:
    """The handle pool's bounds."""

    capacity: int  # idle handles kept open (LRU); leased ones come on top
    busy_timeout: float  # seconds a lease waits for a tenant's lock, then TenantBusy
    preempt_wait: float  # seconds an admin operation waits for a lock holder before preempting it
