"""The fleet builds its hooks once, from a factory that gets the fleet (the hooks need it)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from tenants.fleet import Fleet
from tenants.hooks import FleetHooks
from tests.support.tenants import TEST_CONFIG, TEST_POOL


class _Created(FleetHooks):
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.seen: list[str] = []

    def after_create(self, tenant_id: str, path: Path) -> None:
        self.seen.append(tenant_id)


def test_the_factory_gets_the_fleet_once_and_its_hooks_are_called(tmp_path: Path) -> None:
    made: list[_Created] = []

    def hooks(fleet: Fleet) -> Sequence[FleetHooks]:
        made.append(_Created(fleet))
        return made

    fleet = Fleet(tmp_path / "data", TEST_CONFIG, TEST_POOL, hooks)
    try:
        fleet.create("acme")
        assert [hook.fleet for hook in made] == [fleet]
        assert fleet.hooks == (made[0],)
        assert made[0].seen == ["acme"]
    finally:
        fleet.close()


def test_a_failing_factory_leaves_the_data_dir_free(tmp_path: Path) -> None:
    def broken(fleet: Fleet) -> Sequence[FleetHooks]:
        raise RuntimeError("no replica")

    with pytest.raises(RuntimeError, match="no replica"):
        Fleet(tmp_path / "data", TEST_CONFIG, TEST_POOL, broken)
    Fleet(tmp_path / "data", TEST_CONFIG, TEST_POOL).close()  # a held lock: DataDirLocked
