"""The README's quick start and tour work as written."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import httpx

from ops.process import spawn, stop
from tests.support.server import free_port

ROOT = Path(__file__).resolve().parents[1]


def _tour() -> str:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- tour -->\n```sh\n(.*?)```\n<!-- /tour -->", text, re.S)
    assert block is not None, "README lost its tour block"
    return block.group(1)


def _serve_script(port: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`scripts/serve --port PORT`, ready (its /readyz answers 200); the caller stops it."""
    with open(log, "wb") as out:
        proc = spawn(
            [str(ROOT / "scripts" / "serve"), "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    stop(proc, 30)
    raise AssertionError(f"scripts/serve did not become ready:\n{log.read_text(errors='replace')}")


def _without_sqlfleet_variables() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SQLFLEET_")}


def test_tour_runs_as_written_against_the_quick_start_server(tmp_path: Path) -> None:
    """From the repo root, with SQLFLEET_URL the only variable: the CLI finds the admin key of
    the server `scripts/serve` started, since both use the one default data dir."""
    home = {**_without_sqlfleet_variables(), "XDG_DATA_HOME": str(tmp_path / "xdg")}
    port = free_port()
    proc = _serve_script(port, home, tmp_path / "serve.log")
    try:
        assert (tmp_path / "xdg" / "sqlfleet" / "admin.key").exists()
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", _tour()],
            cwd=ROOT,
            env={**home, "SQLFLEET_URL": f"http://127.0.0.1:{port}"},
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        code = stop(proc, 30)
    assert code == 0
    assert done.returncode == 0, done.stderr
    assert '"rows":[[1,"hello"],[2,"world"]]' in done.stdout
    assert "acme" in done.stdout


def test_serve_script_starts_on_embedded_defaults(tmp_path: Path) -> None:
    port = free_port()
    env = _without_sqlfleet_variables()
    env["SQLFLEET_DATA_DIR"] = str(tmp_path / "data")
    proc = _serve_script(port, env, tmp_path / "serve.log")
    log = tmp_path / "serve.log"
    try:
        key = (tmp_path / "data" / "admin.key").read_text().strip()
        assert key in log.read_text(), "the generated admin key is printed on first start"
        admin = {"Authorization": f"Bearer {key}"}
        r = httpx.post(f"http://127.0.0.1:{port}/v1/admin/tenants", json={"id": "acme"}, headers=admin)
        assert r.status_code == 201
        replica = tmp_path / "data" / "replica" / "segments"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(replica.glob("*.seg")):
            time.sleep(0.1)
        assert any(replica.glob("*.seg")), "backups go to a local directory by default"
    finally:
        code = stop(proc, 30)  # SIGTERM (the script execs the server), SIGKILL after 30 s
    assert code == 0
