"""Shared by the tenants tests (a unique module name: every test folder has its own conftest)."""

from __future__ import annotations

from collections.abc import Callable

from ops.settings import Settings
from tenants.fleet import Fleet

# Small limits keep the limit tests fast; NORMAL avoids an fsync per commit in the hammer tests.
TEST_SETTINGS = Settings.load(environ={}, synchronous="NORMAL", statement_timeout=1.0)
TEST_CONFIG = TEST_SETTINGS.db_config()
TEST_POOL = TEST_SETTINGS.pool_config()

MakeFleet = Callable[..., Fleet]
