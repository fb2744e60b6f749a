"""Durable replacement: the target ends up whole, with its mode, and nothing else is left."""

from __future__ import annotations

import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tenants import files
from tenants.files import DirSync, create_durably, fsync_dir, fsync_file, replace_durably, write_durably
from tests.support.waiting import wait_until


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


def test_create_durably_writes_a_private_file_and_replaces_one_left_there(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    create_durably(path, b"first")
    assert path.read_bytes() == b"first"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 & ~_umask()
    path.chmod(0o644)  # a file a crash left: replaced by a new one, with the mode asked for
    create_durably(path, b"x" * 100_000)
    assert path.read_bytes() == b"x" * 100_000
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 & ~_umask()
    assert os.listdir(tmp_path) == ["t.db"]


def _counting_fsync(
    monkeypatch: pytest.MonkeyPatch, first: threading.Event, fail_second: bool = False
) -> list[Path]:
    """Count fsync_dir calls: the first waits for `first`; the second fails if asked to."""
    calls: list[Path] = []
    real = files.fsync_dir

    def fsync(path: Path) -> None:
        calls.append(path)
        if len(calls) == 1:
            assert first.wait(10)
        if len(calls) == 2 and fail_second:
            raise OSError(5, "Input/output error")
        real(path)

    monkeypatch.setattr(files, "fsync_dir", fsync)
    return calls


@pytest.mark.parametrize("fail", [False, True])
def test_dir_sync_callers_that_arrive_during_an_fsync_share_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail: bool
) -> None:
    release = threading.Event()
    calls = _counting_fsync(monkeypatch, release, fail_second=fail)
    sync = DirSync(tmp_path)
    with ThreadPoolExecutor(9) as pool:
        first = pool.submit(sync.sync)
        wait_until(lambda: len(calls) == 1, interval=0.001)
        # these changed the folder after the running fsync began: it does not cover them
        later = [pool.submit(sync.sync) for _ in range(8)]
        wait_until(lambda: sync._batcher.queued == 8, interval=0.001)
        assert not any(f.done() for f in later)
        release.set()
        first.result(10)
        errors = [f.exception(10) for f in later]
    assert len(calls) == 2  # the first, and one for the eight
    if fail:  # each caller it was to cover is told, none is told it is durable
        assert all(isinstance(e, OSError) and e.errno == 5 for e in errors), errors
        sync.sync()  # a later fsync that succeeds covers its callers
        assert len(calls) == 3
    else:
        assert errors == [None] * 8
