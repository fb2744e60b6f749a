"""Real `sqlfleet serve` processes on loopback (launched by `ops.process`, as the benchmarks
launch theirs), and any other command run to its end under the same rules."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ops import process
from ops.process import ServerProcess, free_port
from tests.support.app import ADMIN_KEY

__all__ = ["ServerProcess", "free_port", "run_bench", "run_command", "run_server", "sql", "start_server"]


def start_server(
    data_dir: Path, *args: str, env: dict[str, str] | None = None, wait: float = 60.0
) -> ServerProcess:
    """`python -m ops serve` on a free loopback port (admin key ADMIN_KEY unless `env` sets
    SQLFLEET_ADMIN_KEY), ready; the caller stops it (`terminate`) in a `finally`."""
    return process.start_server(data_dir, args, admin_key=ADMIN_KEY, env=env, wait=wait)


@contextlib.contextmanager
def run_server(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    """`start_server`, stopped on any way out of the block."""
    with start_server(data_dir, *args, env=env) as server:
        yield server


def sql(server: ServerProcess, tenant: str, statement: str) -> list[list[Any]]:
    """The rows of `statement`, run on the tenant with the admin key (which must succeed)."""
    with server.client() as http:
        r = http.post(f"/v1/tenants/{tenant}/query", json={"sql": statement})
        assert r.status_code == 200, r.text
        rows: list[list[Any]] = r.json()["rows"]
        return rows


def run_bench(
    cwd: Path, *args: str, timeout: float
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """`python -m ops bench ARGS --json-out FILE` run in `cwd` (see `run_command`), which must
    succeed: its output, and its JSON report."""
    out = cwd / "bench.json"
    command = [sys.executable, "-m", "ops", "bench", *args, "--json-out", str(out)]
    proc = run_command(command, cwd=cwd, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report: dict[str, Any] = json.loads(out.read_text())
    return proc, report


def run_command(
    command: Sequence[str], cwd: Path, timeout: float, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `command` to its end as `subprocess.run` would, capturing text output, but in a
    process group of its own that dies with the test run; past `timeout` seconds it is stopped
    (SIGTERM, so it can clean up; then SIGKILL) and the test fails."""
    out, err = cwd / ".stdout", cwd / ".stderr"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        proc = process.spawn(
            command, cwd=cwd, env=env, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL
        )
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        process.stop(proc, 30)
        raise AssertionError(f"{command[:5]} did not finish in {timeout:g} s:\n{err.read_text()}") from None
    finally:
        process.stop(proc, 5)
    texts = out.read_text(errors="replace"), err.read_text(errors="replace")
    out.unlink()
    err.unlink()
    return subprocess.CompletedProcess(list(command), proc.returncode, *texts)
