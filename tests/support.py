"""Shared test helpers: an in-process app, and real `sqlfleet serve` processes on loopback
(launched by `ops.process`, as the benchmarks launch theirs)."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from ops import process
from ops.process import ServerProcess, free_port
from ops.server import Server
from ops.settings import Settings

ADMIN_KEY = "test-admin-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}

__all__ = [
    "ADMIN",
    "ADMIN_KEY",
    "InProcess",
    "ServerProcess",
    "bearer",
    "free_port",
    "in_process",
    "run_command",
    "run_server",
    "start_server",
]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class InProcess:
    """The real ASGI app driven in-process through Starlette's TestClient."""

    server: Server
    client: TestClient

    def create(self, tenant: str, group: str | None = None) -> dict[str, Any]:
        r = self.client.post("/v1/admin/tenants", json={"id": tenant, "group": group}, headers=ADMIN)
        assert r.status_code == 201, r.text
        body: dict[str, Any] = r.json()
        return body

    def token(self, tenant: str, access: str = "rw", expires_in: int = 3600) -> str:
        r = self.client.post(
            f"/v1/admin/tenants/{tenant}/tokens",
            json={"access": access, "expires_in": expires_in},
            headers=ADMIN,
        )
        assert r.status_code == 200, r.text
        token: str = r.json()["token"]
        return token

    def query(self, tenant: str, sql: str, params: Any = None, token: str | None = None) -> Any:
        body: dict[str, Any] = {"sql": sql} if params is None else {"sql": sql, "params": params}
        return self.client.post(
            f"/v1/tenants/{tenant}/query", json=body, headers=bearer(token) if token else ADMIN
        )


@contextlib.contextmanager
def in_process(data_dir: Path, **overrides: Any) -> Iterator[InProcess]:
    settings = Settings.load(environ={}, data_dir=data_dir, admin_key=ADMIN_KEY, **overrides)
    server = Server.build(settings)
    try:
        with TestClient(server.app, raise_server_exceptions=False) as client:
            yield InProcess(server, client)
    finally:
        server.close()


def start_server(
    data_dir: Path, *args: str, env: dict[str, str] | None = None, wait: float = 60.0
) -> ServerProcess:
    """`python -m ops serve` on a free loopback port (admin key ADMIN_KEY unless `env` sets
    SQLFLEET_ADMIN_KEY), ready; the caller stops it (`terminate`) in a `finally`."""
    return process.start_server(data_dir, args, admin_key=ADMIN_KEY, env=env, wait=wait)


@contextlib.contextmanager
def run_server(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    """`start_server`, stopped on any way out of the block."""
    with process.start_server(data_dir, args, admin_key=ADMIN_KEY, env=env) as server:
        yield server


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
