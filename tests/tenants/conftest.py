"""Fixtures for the tenants layer: a real Fleet over a fresh data dir, closed after each test."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tenants.config import DbConfig
from tenants.fleet import Fleet
from tenants.hooks import FleetHooks
from tests.support.tenants import TEST_CONFIG, TEST_POOL, MakeFleet


@pytest.fixture
def make_fleet(tmp_path: Path) -> Iterator[MakeFleet]:
    """Build Fleets over `tmp_path/data` (or another dir); every one still open is closed at the end."""
    fleets: list[Fleet] = []

    def make(
        config: DbConfig = TEST_CONFIG,
        capacity: int = 8,
        data_dir: Path | None = None,
        hooks: Sequence[FleetHooks] = (),
    ) -> Fleet:
        pool = dataclasses.replace(TEST_POOL, capacity=capacity)
        fleet = Fleet(data_dir or tmp_path / "data", config, pool, lambda fleet: hooks)
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        if fleet.lock_held:
            fleet.close()


@pytest.fixture
def fleet(make_fleet: MakeFleet) -> Fleet:
    return make_fleet()
