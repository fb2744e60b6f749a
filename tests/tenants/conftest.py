"""Fixtures for the tenants layer: a real Fleet over a fresh data dir, closed after each test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tenants_support import TEST_CONFIG, MakeFleet

from tenants.config import DbConfig
from tenants.fleet import Fleet


@pytest.fixture
def make_fleet(tmp_path: Path) -> Iterator[MakeFleet]:
    """Build Fleets over `tmp_path/data` (or another dir); every one still open is closed at the end."""
    fleets: list[Fleet] = []

    def make(
        config: DbConfig = TEST_CONFIG, capacity: int = 8, data_dir: Path | None = None, **kw: object
    ) -> Fleet:
        fleet = Fleet(data_dir or tmp_path / "data", config, capacity, **kw)  # type: ignore[arg-type]
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        if fleet.lock_held:
            fleet.close()


@pytest.fixture
def fleet(make_fleet: MakeFleet) -> Fleet:
    return make_fleet()
