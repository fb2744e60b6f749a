"""Shared by the tenants tests (a unique module name: every test folder has its own conftest)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import apsw

from ops.settings import Settings
from tenants.execute import Statement
from tenants.fleet import Fleet

# Small limits keep the limit tests fast; NORMAL avoids an fsync per commit in the hammer tests.
TEST_SETTINGS = Settings.load(environ={}, synchronous="NORMAL", statement_timeout=1.0)
TEST_CONFIG = TEST_SETTINGS.db_config()
TEST_POOL = TEST_SETTINGS.pool_config()

MakeFleet = Callable[..., Fleet]


def filled_and_folded(fleet: Fleet, tenant: str) -> Path:
    """Give the existing `tenant` a table `t` of 200 rows (500 random bytes each), close `fleet`
    and fold the WAL into the main file with the real library (so its pages can be trashed in
    place); the main file's path."""
    fleet.execute(tenant, Statement("CREATE TABLE t(x)"))
    fleet.execute(
        tenant,
        Statement(
            "INSERT INTO t WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c LIMIT 200) "
            "SELECT randomblob(500) FROM c"
        ),
    )
    fleet.close()
    path = fleet.layout.tenant_path(tenant)
    db = apsw.Connection(str(path))
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    db.close()
    return path
