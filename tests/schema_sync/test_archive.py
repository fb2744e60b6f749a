"""A group as one archive (schema_sync/archive.py) and the GroupStore port the fleet metadata
uses: export, restore on another data dir, refusal of anything but such an archive, and the
list of groups changed since it was last read."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from schema_sync import archive
from schema_sync.errors import GroupExists
from schema_sync.groups import GroupStore
from schema_sync.rollout import RolloutOptions
from schema_sync.rollouts import Rollouts
from tenants.errors import BadRequest
from tests.schema_sync.test_rollout import wait
from tests.support.schema import SchemaFleet

SHOP = "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL);"


def shop_with_history(sf: SchemaFleet) -> None:
    """Group shop: two released migrations (one a sync step), a finished rollout, and one
    more migration registered but not rolled out."""
    sf.groups.create("shop", SHOP)
    sf.fleet.create("t1", "shop")
    sf.groups.add_migration("shop", "price", "ALTER TABLE items ADD COLUMN price REAL;")
    sf.groups.add_sync("shop", "tags", SHOP.replace("NOT NULL", "NOT NULL, price REAL, tags TEXT"))
    assert wait(sf.rollouts.start("shop", RolloutOptions()))["state"] == "completed"
    sf.groups.add_migration("shop", "later", "CREATE TABLE later(x);")


def test_a_group_comes_back_whole_on_another_data_dir(schema_fleet: SchemaFleet, tmp_path: Path) -> None:
    sf = schema_fleet
    shop_with_history(sf)
    data = sf.groups.export("shop")

    other = GroupStore(tmp_path / "elsewhere", timeout=5.0)
    other.restore("shop", data)
    assert other.names() == ["shop"]
    before, after = sf.groups.get("shop").state(fresh=True), other.get("shop").state(fresh=True)
    assert after.to_json() == before.to_json()
    assert after.head == 2 and len(after.migrations) == 3  # released 2, one pending
    assert other.get("shop").schema_sql() == sf.groups.get("shop").schema_sql()
    history = Rollouts(other, sf.fleet, 1).history("shop")
    assert [r["state"] for r in history] == ["completed"]
    assert history == sf.rollouts.history("shop")
    with pytest.raises(GroupExists):
        other.restore("shop", data)


def test_changes_are_listed_once_for_the_publisher(schema_fleet: SchemaFleet, tmp_path: Path) -> None:
    sf = schema_fleet
    assert sf.groups.take_changed() == set()
    shop_with_history(sf)
    assert sf.groups.take_changed() == {"shop"}
    assert sf.groups.take_changed() == set()
    sf.groups.release("shop")
    assert sf.groups.take_changed() == {"shop"}
    assert sf.groups.release("shop") == [] and sf.groups.take_changed() == set()  # nothing to release
    other = GroupStore(tmp_path / "elsewhere", timeout=5.0)
    other.restore("shop", sf.groups.export("shop"))
    assert other.take_changed() == {"shop"}  # a restored group is published by its new server too


def _tar(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _header(**changes: object) -> bytes:
    return json.dumps(
        {"format": archive.FORMAT, "version": archive.VERSION, "name": "shop", **changes}
    ).encode()


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ({"template.db": b""}, "does not start with group.json"),
        ({"group.json": _header(name="blog")}, "archive of group 'blog' offered as group 'shop'"),
        ({"group.json": _header(version=99)}, "version 99"),
        ({"group.json": _header(format="tar")}, "is not a sqlfleet-group archive"),
        ({"group.json": _header(), "../escape.db": b"x"}, "unexpected member '../escape.db'"),
        ({"group.json": _header(), "migrations/../../x.sql": b"x"}, "unexpected member"),
        ({"group.json": _header(), "rollouts/a.json": b"{}"}, "has no template.db"),
        ({"group.json": _header(), "template.db": b"not a database"}, "template"),
    ],
)
def test_anything_but_a_sound_archive_of_that_group_is_refused(
    tmp_path: Path, members: dict[str, bytes], message: str
) -> None:
    store = GroupStore(tmp_path / "data", timeout=5.0)
    with pytest.raises(BadRequest, match=message.replace("(", r"\(").replace(".", r"\.")):
        store.restore("shop", _tar(members))
    assert store.names() == [] and not (tmp_path / "escape.db").exists()
    assert not [p for p in (tmp_path / "data" / "groups").iterdir()]  # no staging left behind


def test_a_template_whose_record_disagrees_with_the_migrations_is_refused(
    schema_fleet: SchemaFleet, tmp_path: Path
) -> None:
    sf = schema_fleet
    shop_with_history(sf)
    with tarfile.open(fileobj=io.BytesIO(sf.groups.export("shop"))) as tar:
        members = {m.name: f.read() for m in tar.getmembers() if (f := tar.extractfile(m)) is not None}
    del members["migrations/0001_price.sql"]  # the template records it as applied
    with pytest.raises(BadRequest, match="not a consistent group"):
        GroupStore(tmp_path / "elsewhere", timeout=5.0).restore("shop", _tar(members))
