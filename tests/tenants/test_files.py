"""Durable replacement: the target ends up whole, with its mode, and nothing else is left."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tenants.files import fsync_dir, fsync_file, replace_durably, write_durably


def test_write_durably_replaces_whole_with_the_mode(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"old")
    write_durably(path, b"new")
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 & ~_umask()
    write_durably(path, b"newer", mode=0o644)
    assert path.read_bytes() == b"newer"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644 & ~_umask()
    assert os.listdir(tmp_path) == ["secret"]  # no temporary file left


def test_write_durably_into_a_missing_directory_fails_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_durably(tmp_path / "gone" / "file", b"x")
    assert os.listdir(tmp_path) == []


def test_write_durably_leaves_no_temporary_file_when_the_rename_fails(tmp_path: Path) -> None:
    (tmp_path / "target").mkdir()  # a directory cannot be replaced by a file
    with pytest.raises(IsADirectoryError):
        write_durably(tmp_path / "target", b"x")
    assert os.listdir(tmp_path) == ["target"]


def test_replace_durably_moves_the_file_over_the_target(tmp_path: Path) -> None:
    tmp, final = tmp_path / "f.tmp", tmp_path / "f"
    tmp.write_bytes(b"new")
    final.write_bytes(b"old")
    replace_durably(tmp, final)
    assert final.read_bytes() == b"new" and not tmp.exists()
    fsync_file(final)
    fsync_dir(tmp_path)
    with pytest.raises(NotADirectoryError):
        fsync_dir(final)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
