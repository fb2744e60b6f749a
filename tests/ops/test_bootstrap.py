"""scripts/bootstrap.sh installs once per pyproject.toml, whichever script (serve: base, test:
dev extras) sourced it last, run against a fake venv whose `python` only logs its arguments."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _checkout(tmp_path: Path) -> Path:
    """A copy of the script next to a pyproject.toml, and a venv whose python logs its calls."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "bootstrap.sh", tmp_path / "scripts" / "bootstrap.sh")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path / "calls.log"}\n')
    python.chmod(0o755)
    return tmp_path


def _source(root: Path, extras: str | None) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SQLFLEET_EXTRAS"}
    if extras is not None:
        env["SQLFLEET_EXTRAS"] = extras
    subprocess.run(["bash", "-c", f"source {root}/scripts/bootstrap.sh"], env=env, check=True, timeout=60)


def _installs(root: Path) -> list[str]:
    log = root / "calls.log"
    calls = log.read_text().splitlines() if log.exists() else []
    return [call.split()[-1].removeprefix(str(root)) for call in calls if " -e " in f" {call} "]


def test_a_dev_install_satisfies_base_and_nothing_installs_twice(tmp_path: Path) -> None:
    root = _checkout(tmp_path)
    for extras in ("dev", None, "dev", None):  # scripts/test, scripts/serve, and again
        _source(root, extras)
    assert _installs(root) == ["[dev]"]


def test_base_first_then_dev_installs_the_extras_once(tmp_path: Path) -> None:
    root = _checkout(tmp_path)
    for extras in (None, "dev", None, "dev"):
        _source(root, extras)
    assert _installs(root) == ["", "[dev]"]


def test_a_changed_pyproject_installs_again(tmp_path: Path) -> None:
    root = _checkout(tmp_path)
    _source(root, "dev")
    (root / "pyproject.toml").write_text("[project]\nname = 'y'\n")
    for extras in (None, "dev", None):
        _source(root, extras)
    assert _installs(root) == ["[dev]", "", "[dev]"]
    assert len(list((root / ".venv").glob(".installed-*"))) == 2  # the new hash's base and dev
