"""tenants.images: the bytes new tenant files start as, made once per kind and remembered only
while the template they come from is unchanged."""

from __future__ import annotations

import os
from pathlib import Path

import apsw
import pytest

from tenants import images
from tenants.execute import Statement
from tenants.fleet import Fleet
from tenants.hooks import FleetHooks
from tenants.images import Images
from tests.support.tenants import TEST_CONFIG, MakeFleet


def _template(path: Path, *tables: str) -> Path:
    """A rollback-journal database with `tables` (a template as a group may hold one)."""
    path.unlink(missing_ok=True)
    db = apsw.Connection(str(path))
    for table in tables:
        db.execute(f"CREATE TABLE {table}(x)")
    db.close()
    return path


def _tables(image: bytes, folder: Path) -> list[str]:
    """The tables of the database `image` (written to a new file in `folder`)."""
    folder.mkdir(exist_ok=True)
    where = folder / f"{len(os.listdir(folder))}.db"
    where.write_bytes(image)
    db = apsw.Connection(str(where), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return [
            str(r[0]) for r in db.execute("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY 1")
        ]
    finally:
        db.close()


def test_images_are_wal_mode_files_made_once(tmp_path: Path) -> None:
    made = Images(tmp_path, TEST_CONFIG)
    empty = made.empty()
    assert empty[:16] == b"SQLite format 3\x00" and empty[18:20] == b"\x02\x02"  # WAL mode
    assert made.empty() is empty
    template = _template(tmp_path / "template.db", "a", "b")
    image = made.of_template(template)
    assert image is not None and image[18:20] == b"\x02\x02"
    assert _tables(image, tmp_path / "checks") == ["a", "b"]
    assert made.of_template(template) is image  # remembered
    assert sorted(os.listdir(tmp_path)) == ["checks", "template.db"]  # nothing else left behind


def test_a_changed_template_is_made_anew(tmp_path: Path) -> None:
    made = Images(tmp_path, TEST_CONFIG)
    template = _template(tmp_path / "template.db", "a")
    first = made.of_template(template)
    _template(template, "a", "c")  # replaced: a new file
    second = made.of_template(template)
    assert second is not None and _tables(second, tmp_path / "checks") == ["a", "c"]
    db = apsw.Connection(str(template))  # written in place
    db.execute("CREATE TABLE d(x)")
    db.close()
    third = made.of_template(template)
    assert third is not None and _tables(third, tmp_path / "checks") == ["a", "c", "d"]
    assert first is not None and _tables(first, tmp_path / "checks") == ["a"]


def test_a_large_template_is_not_kept_in_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "MAX_TEMPLATE_BYTES", 1024)
    assert Images(tmp_path, TEST_CONFIG).of_template(_template(tmp_path / "t.db", "a")) is None


class _Group(FleetHooks):
    def __init__(self, template: Path) -> None:
        self.template = template

    def template_for(self, group: str) -> Path | None:
        return self.template


@pytest.mark.parametrize("large", [False, True])
def test_group_tenants_start_as_the_template_is_at_their_creation(
    make_fleet: MakeFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, large: bool
) -> None:
    if large:  # copied file to file instead
        monkeypatch.setattr(images, "MAX_TEMPLATE_BYTES", 1024)
    template = _template(tmp_path / "template.db", "a")
    fleet: Fleet = make_fleet(hooks=[_Group(template)])
    fleet.create("one", "g")
    _template(template, "a", "b")
    fleet.create("two", "g")
    fleet.create("three", "g")
    query = Statement("SELECT group_concat(name) FROM (SELECT name FROM sqlite_schema ORDER BY 1)")
    assert fleet.execute("one", query).rows == [("a",)]
    assert fleet.execute("two", query).rows == fleet.execute("three", query).rows == [("a,b",)]
    for tenant in ("one", "two", "three"):
        assert fleet.info(tenant).size == fleet.layout.tenant_path(tenant).stat().st_size
        journal = fleet.execute(tenant, Statement("PRAGMA journal_mode")).rows
        assert journal == [("wal",)]
