"""Shared by the tenants tests (a unique module name: every test folder has its own conftest)."""

from __future__ import annotations

from collections.abc import Callable

from tenants.config import DbConfig
from tenants.fleet import Fleet

# Small limits keep the limit tests fast; NORMAL avoids an fsync per commit in the hammer tests.
TEST_CONFIG = DbConfig(synchronous="NORMAL", statement_timeout=1.0)

MakeFleet = Callable[..., Fleet]
