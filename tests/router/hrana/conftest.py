"""Fixtures for the Hrana tests: the app in-process, a real server shared by a module, the
official JS client installed from npm.

Hrana endpoints answer errors in the protocol's own `{"message", "code"}` shape (its clients
parse exactly that), so the REST contract check of tests/router/conftest.py does not apply here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.app import InProcess, in_process
from tests.support.hrana import IDLE_TIMEOUT, Served
from tests.support.server import run_server

NODE_DIR = Path(__file__).parent / "node"


@pytest.fixture
def app(tmp_path: Path) -> Iterator[InProcess]:
    """The real app in-process; a tenant held by a transaction answers 503 after 0.3 s."""
    with in_process(tmp_path / "data", busy_timeout=0.3) as running:
        yield running


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A real `sqlfleet serve` process for the whole module."""
    data = tmp_path_factory.mktemp("hrana") / "data"
    env = {"SQLFLEET_STREAM_IDLE_TIMEOUT": str(IDLE_TIMEOUT), "SQLFLEET_BUSY_TIMEOUT": "2"}
    with run_server(data, env=env) as server:
        yield Served(server)
    assert server.proc.returncode == 0, server.log()


@pytest.fixture(scope="session")
def node_client() -> Path:
    """The folder of the node scenarios, with its packages installed (`npm ci` when one is
    missing; scripts/test does the same before pytest starts)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("node and npm are needed: scripts/test installs them (apt-get install nodejs npm)")
    packages = json.loads((NODE_DIR / "package.json").read_text())["dependencies"]
    if not all((NODE_DIR / "node_modules" / name).is_dir() for name in packages):
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            check=True,
            timeout=600,
            capture_output=True,
        )
    return NODE_DIR
