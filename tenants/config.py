"""What the tenants layer needs to know, built by ops from Settings."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DbConfig:
    """Per-connection pragmas and the sandbox's limits."""

    synchronous: str = "FULL"
    cache_size_kib: int = 256
    max_db_bytes: int = 1 << 30  # the main file, and separately the TEMP tables
    max_sql_length: int = 100_000
    statement_timeout: float = 2.0
    max_result_rows: int = 10_000
    max_result_bytes: int = 8 << 20  # also bounds any single value (SQLITE_LIMIT_LENGTH)
