"""Local-directory specifics: the files on disk, temporary files, directory cleanup."""

from __future__ import annotations

from pathlib import Path

import pytest

from backups.errors import ReplicaError, ReplicaNotFound
from backups.local_replica import LocalReplica


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_objects_are_plain_files_at_their_key(tmp_path: Path) -> None:
    replica = LocalReplica(tmp_path / "not" / "yet" / "there")

    replica.put("segments/2024/0001.seg", b"frames")

    assert (tmp_path / "not/yet/there/segments/2024/0001.seg").read_bytes() == b"frames"
    assert _files(tmp_path) == ["not/yet/there/segments/2024/0001.seg"]  # no temporary files left


def test_missing_root_lists_nothing(tmp_path: Path) -> None:
    replica = LocalReplica(tmp_path / "absent")

    assert list(replica.list()) == []
    with pytest.raises(ReplicaNotFound):
        replica.get("x")
    replica.delete(["x"])
    assert not (tmp_path / "absent").exists()


def test_leftover_temporary_files_are_not_objects(tmp_path: Path) -> None:
    replica = LocalReplica(tmp_path)
    replica.put("a/b", b"real")
    (tmp_path / "a" / ".tmp-crashed-put").write_bytes(b"half")

    assert [o.key for o in replica.list()] == ["a/b"]


def test_delete_removes_emptied_directories_but_not_the_root(tmp_path: Path) -> None:
    root = tmp_path / "replica"
    replica = LocalReplica(root)
    replica.put("x/y/z/1", b"1")
    replica.put("x/keep", b"k")

    replica.delete(["x/y/z/1"])

    assert not (root / "x" / "y").exists()
    assert _files(root) == ["x/keep"]
    replica.delete(["x/keep"])
    assert root.is_dir() and list(root.iterdir()) == []


def test_key_that_collides_with_a_directory_is_an_error(tmp_path: Path) -> None:
    replica = LocalReplica(tmp_path)
    replica.put("a/b", b"x")

    for key in ("a", "a/b/c"):
        with pytest.raises(ReplicaError) as caught:
            replica.put(key, b"y")
        assert type(caught.value) is ReplicaError
    assert _files(tmp_path) == ["a/b"]


def test_symlinked_root_works(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    replica = LocalReplica(tmp_path / "link")

    replica.put("k/1", b"1")
    replica.delete(["k/1"])
    replica.put("k/2", b"2")

    assert [o.key for o in replica.list()] == ["k/2"]
    assert _files(tmp_path / "real") == ["k/2"]
