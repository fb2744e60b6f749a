from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import apsw
import pytest

from tenants.errors import DataDirLocked
from tenants.execute import Statement
from tenants.layout import DataDirLock, Layout
from tests.support.tenants import MakeFleet

REPO = Path(__file__).resolve().parents[2]

# A second process that only tries to take the lock: exit 0 if it got it, 3 if refused.
_TRY_LOCK = """
import sys
from pathlib import Path
from tenants.errors import DataDirLocked
from tenants.execute import Statement
from tenants.layout import DataDirLock, Layout
try:
    DataDirLock(Layout(Path(sys.argv[1]))).acquire()
except DataDirLocked as exc:
    print(exc.code, exc.message)
    sys.exit(3)
"""


def _try_lock_in_subprocess(data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", _TRY_LOCK, str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=REPO,
    )


def test_tenant_paths_are_spread_over_two_hashed_levels(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    path = layout.tenant_path("acme")
    assert path.name == "acme.db"
    top, sub = path.parent.parent.name, path.parent.name
    assert len(top) == len(sub) == 2 and int(top + sub, 16) >= 0
    assert path.parent.parent.parent == layout.tenants_dir
    folders = {layout.tenant_path(f"t{i}").parent for i in range(200)}
    assert len(folders) > 150  # spread, not piled in one folder


def test_scan_finds_main_files_only(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    layout.ensure()
    for tenant in ("a", "b"):
        path = layout.tenant_path(tenant)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        path.with_name(path.name + "-wal").write_bytes(b"")
    stray = layout.tenant_path("c")
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.with_name("c.db.tmp1234").write_bytes(b"")
    found = layout.scan()
    assert found.tenant_ids == {"a", "b"}
    assert [p.name for p in found.leftovers] == ["c.db.tmp1234"]
    assert found.strays == []


def test_remove_tenant_files_is_idempotent(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    main = layout.tenant_path("acme")
    main.parent.mkdir(parents=True)
    for name in ("acme.db", "acme.db-wal", "acme.db-shm", "acme.db.tmpabcd", "acme.db.tmpabcd-wal"):
        (main.parent / name).write_bytes(b"x")
    (main.parent / "acme2.db").write_bytes(b"x")  # another tenant in the same folder survives
    layout.remove_tenant_files("acme")
    layout.remove_tenant_files("acme")
    assert sorted(p.name for p in main.parent.iterdir()) == ["acme2.db"]


def test_second_fleet_in_the_same_process_is_refused(make_fleet: MakeFleet, tmp_path: Path) -> None:
    first = make_fleet()
    with pytest.raises(DataDirLocked) as info:
        make_fleet()
    assert info.value.code == "data_dir_locked"
    assert first.lock_held
    first.close()
    assert not first.lock_held
    second = make_fleet()
    assert second.lock_held


def test_second_process_is_refused_until_release(make_fleet: MakeFleet, tmp_path: Path) -> None:
    fleet = make_fleet()
    refused = _try_lock_in_subprocess(tmp_path / "data")
    assert refused.returncode == 3, refused.stderr
    assert "data_dir_locked" in refused.stdout
    fleet.close()
    allowed = _try_lock_in_subprocess(tmp_path / "data")
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr


def test_the_lock_dies_with_its_process(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", _TRY_LOCK + "\nprint('held', flush=True)\nsys.stdin.read()", str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        lock = DataDirLock(Layout(tmp_path))
        with pytest.raises(DataDirLocked):
            lock.acquire()
        holder.kill()
        holder.wait(30)
        lock.acquire()  # a killed owner leaves no stale lock behind
        assert lock.held
        lock.release()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(30)
        if holder.stdout is not None:
            holder.stdout.close()
        if holder.stdin is not None:
            holder.stdin.close()


def test_lock_file_names_the_owner(tmp_path: Path) -> None:
    lock = DataDirLock(Layout(tmp_path))
    lock.acquire()
    try:
        assert (tmp_path / "LOCK").read_text().strip() == str(os.getpid())
    finally:
        lock.release()
    lock.release()  # idempotent


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mode & 0o777 for p in root.rglob("*")}


def test_tenant_files_and_folders_are_the_server_users_only_whatever_the_umask(
    make_fleet: MakeFleet, tmp_path: Path
) -> None:
    previous = os.umask(0o022)  # the usual umask, which gave 0644 files in 0755 folders
    try:
        fleet = make_fleet()
        fleet.create("plain")
        fleet.execute("plain", Statement("CREATE TABLE t(x)"))  # a WAL, from the open handle
        template = tmp_path / "template.db"
        db = apsw.Connection(str(template))
        db.execute("CREATE TABLE t(x)")
        db.close()
        os.chmod(template, 0o644)
        fleet.create("copied", template=template)
        fleet.replace("plain", template)  # a restore in place
        fleet.execute("plain", Statement("INSERT INTO t VALUES (1)"))
        assert Path(f"{fleet.layout.tenant_path('plain')}-wal").exists()
        modes = _modes(fleet.layout.root)
    finally:
        os.umask(previous)
    for name, mode in modes.items():
        folder = (fleet.layout.root / name).is_dir()
        assert mode == (0o700 if folder else 0o600), f"{name}: {mode:o}"


def test_folders_of_an_older_install_are_made_private(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "data")
    for folder in (layout.tenants_dir, layout.system_dir):
        folder.mkdir(parents=True, mode=0o755)
        os.chmod(folder, 0o755)
    layout.ensure()
    assert (layout.tenants_dir.stat().st_mode & 0o777, layout.system_dir.stat().st_mode & 0o777) == (
        0o700,
        0o700,
    )
