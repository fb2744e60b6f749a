"""The floor of `sqlfleet bench fleet`: the fleet's per-tenant work done with none of the server's
code (bare Python and APSW), on the same file system, at the same concurrency, in the same run.
What the server takes above it is ours (HTTP, routing, auth, the catalog, backups); the floor
itself is SQLite and the kernel. Issue 14 asks for each missed target to be explained that way.

Per tenant, in threads (SQLite calls and fsync release the GIL):
- create: the least a durable create is: a new file (O_EXCL) holding the empty tenant's bytes,
  fsync'd, its folder fsync'd. No catalog row, no backup snapshot (the server does both).
- setup: its first write as the bench's set-up sends it: open in exclusive WAL mode with the
  server's `synchronous`, the `kv` table and its rows in one transaction, close.
- query: a pool miss: open with the same pragmas, the point query, close.
Folders and names are the server's (tenants/<2 hex>/<2 hex>/<id>.db), so directory sizes match.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import apsw

from ops.bench.driver import CREATE_SQL, QUERY_SQL, ROWS_SQL
from ops.settings import Settings
from tenants.images import Images
from tenants.layout import Layout

T = TypeVar("T")


def fleet_floor(
    root: Path, ids: Sequence[str], rows: int, settings: Settings, load: tuple[int, int]
) -> dict[str, Any]:
    """Create, set up and query each of `ids` once with bare Python and APSW, under the empty
    folder `root` (the caller removes it); `load`: how many at once while creating and setting
    up, and while querying (the bench's own). Returns per step: count, seconds, per_s and
    cpu_us_per_op (this process's CPU, every thread). Raises OSError, apsw.Error."""
    config = settings.db_config()
    layout = Layout(root)
    layout.ensure()
    image = Images(layout.system_dir, config).empty()
    pragmas = (
        f"PRAGMA locking_mode=EXCLUSIVE; PRAGMA journal_mode=WAL; PRAGMA synchronous={config.synchronous}"
    )

    def create(tenant: str) -> None:
        folder = layout.make_tenant_dir(tenant)
        fd = os.open(layout.tenant_path(tenant), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, image)
            os.fsync(fd)
        finally:
            os.close(fd)
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def opened(tenant: str) -> apsw.Connection:
        conn = apsw.Connection(str(layout.tenant_path(tenant)), flags=apsw.SQLITE_OPEN_READWRITE)
        conn.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
        conn.execute(pragmas).fetchall()
        return conn

    def setup(tenant: str) -> None:
        conn = opened(tenant)
        try:
            with conn:  # one transaction, as the set-up's batch is
                conn.execute(CREATE_SQL)
                conn.execute(ROWS_SQL, (rows,))
        finally:
            conn.close()

    def query(tenant: str) -> None:
        conn = opened(tenant)
        try:
            conn.execute(QUERY_SQL, (1,)).fetchall()
        finally:
            conn.close()

    setup_concurrency, concurrency = load
    return {
        "create": _timed(create, ids, setup_concurrency),
        "setup": _timed(setup, ids, setup_concurrency),
        "query": _timed(query, ids, concurrency),
    }


def in_threads(step: Callable[[T], object], items: Sequence[T], concurrency: int) -> tuple[float, float]:
    """`step` on each of `items`, `concurrency` at once; (wall seconds, this process's CPU seconds,
    every thread's)."""
    cpu, started = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(step, items))
    return time.perf_counter() - started, time.process_time() - cpu


def _timed(step: Callable[[str], None], ids: Sequence[str], concurrency: int) -> dict[str, float]:
    elapsed, cpu = in_threads(step, ids, concurrency)
    return {
        "count": len(ids),
        "seconds": round(elapsed, 3),
        "per_s": round(len(ids) / max(elapsed, 1e-9), 1),
        "cpu_us_per_op": round(cpu / max(len(ids), 1) * 1e6, 1),
    }
