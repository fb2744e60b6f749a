"""Shared test helpers: an in-process app and real uvicorn server processes on loopback."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from starlette.testclient import TestClient

from ops.process import free_port, terminate
from ops.server import Server
from ops.settings import Settings

ADMIN_KEY = "test-admin-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


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


@dataclass
class ServerProcess:
    """A real `sqlfleet serve` process; `url`, `admin_key`, `data_dir`, and ways to stop it."""

    proc: subprocess.Popen[bytes]
    url: str
    data_dir: Path
    admin_key: str = ADMIN_KEY
    log_path: Path = field(default_factory=Path)

    def client(self, timeout: float = 30.0) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.admin_key}"}, timeout=timeout
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; returns the exit code (kills after `timeout`)."""
        return terminate(self.proc, timeout)

    def kill9(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def start_server(
    data_dir: Path, *args: str, env: dict[str, str] | None = None, wait: float = 30.0
) -> ServerProcess:
    """Start `python -m ops serve` on a free loopback port and wait until /readyz answers 200."""
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir.parent / f"server-{port}.log"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SQLFLEET_")}
    environment.update({"SQLFLEET_ADMIN_KEY": ADMIN_KEY, **(env or {})})
    cmd = [sys.executable, "-m", "ops", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--data-dir", str(data_dir), *args]  # fmt: skip
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=environment)
    server = ServerProcess(
        proc, f"http://127.0.0.1:{port}", data_dir, environment["SQLFLEET_ADMIN_KEY"], log_path
    )
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.url}/readyz", timeout=1).status_code == 200:
                return server
        time.sleep(0.05)
    server.kill9()
    raise RuntimeError(f"server did not become ready in {wait}s:\n{server.log()}")


@contextlib.contextmanager
def run_server(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    server = start_server(data_dir, *args, env=env)
    try:
        yield server
    finally:
        server.terminate()
