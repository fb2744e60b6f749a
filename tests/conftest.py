"""Session-wide set-up: the in-process `app` fixture, and the leak check (like Datasette's): the
run fails if, when the suite ends, a process some test started is still alive or a `sqlfleet-*`
temp dir some test made is left behind."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from ops.process import become_subreaper
from tests.support.app import InProcess, in_process
from tests.support.s3 import MotoServer

# Seconds a process may still take to exit at the end (it was told to stop and is on its way).
LEAK_GRACE = 10.0

_temp_root: Path | None = None
_saved_tmpdir: str | None = None


def pytest_configure(config: pytest.Config) -> None:
    """Give this run a temp dir of its own (for its subprocesses too, through TMPDIR), so the leak
    check sees exactly what this run made, whatever else on the machine uses the shared one.
    pytest's own tmp_path dirs stay in the shared one (PYTEST_DEBUG_TEMPROOT) and are removed by
    tmp_path_retention_policy. And become a subreaper: a test's orphaned grandchild (a server
    whose parent died) re-parents to this process, and so stays visible to the check."""
    global _temp_root, _saved_tmpdir
    os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", tempfile.gettempdir())
    _saved_tmpdir = os.environ.get("TMPDIR")
    _temp_root = Path(tempfile.mkdtemp(prefix="pytest-sqlfleet-"))
    os.environ["TMPDIR"] = tempfile.tempdir = str(_temp_root)
    become_subreaper()


def pytest_unconfigure(config: pytest.Config) -> None:
    global _temp_root
    if _saved_tmpdir is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = _saved_tmpdir
    tempfile.tempdir = None
    if _temp_root is not None:
        shutil.rmtree(_temp_root, ignore_errors=True)
        _temp_root = None


@pytest.fixture(scope="session", autouse=True)
def no_leaks() -> Iterator[None]:
    """Set up before every other fixture and torn down after them all: then no process started
    during the run may be alive and no `sqlfleet-*` temp dir may be left. Whatever is left is
    named in the failure, and killed or removed."""
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield
    alive = [p for p in me.children(recursive=True) if p.pid not in before and _running(p)]
    _, alive = psutil.wait_procs(alive, timeout=LEAK_GRACE)
    leaked = [_describe(p) for p in alive]
    for p in alive:
        p.kill()
    psutil.wait_procs(alive, timeout=10)
    dirs = sorted(_temp_root.glob("sqlfleet-*")) if _temp_root is not None else []
    for path in dirs:
        shutil.rmtree(path, ignore_errors=True)
    if leaked or dirs:
        lines = [f"process still running: {p}" for p in leaked] + [f"temp dir left: {d}" for d in dirs]
        pytest.fail(
            "the suite left things behind (now killed / removed):\n" + "\n".join(lines), pytrace=False
        )


def _running(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _describe(p: psutil.Process) -> str:
    try:
        return f"pid {p.pid}: {' '.join(p.cmdline())[:200]}"
    except psutil.Error:
        return f"pid {p.pid}"


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """One moto S3 server for the whole run (bucket `tests.support.s3.BUCKET`); tests share it, so
    each one works under its own key prefix."""
    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log")
    try:
        server.launch()
        yield server
    finally:
        server.close()


@pytest.fixture
def app(tmp_path: Path) -> Iterator[InProcess]:
    """The real app in-process over a fresh data dir, admin key `tests.support.app.ADMIN_KEY`."""
    with in_process(tmp_path / "data") as running:
        yield running
