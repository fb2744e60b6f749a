"""The real ASGI app in-process (Starlette's TestClient), and the admin credentials every test
server is started with."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from starlette.testclient import TestClient

from ops.server import Server
from ops.settings import Settings

ADMIN_KEY = "test-admin-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Reply(Protocol):
    """What tests read of a response (httpx's, or the TestClient's)."""

    @property
    def status_code(self) -> int: ...

    @property
    def text(self) -> str: ...

    @property
    def headers(self) -> Any: ...

    def json(self, **kwargs: Any) -> Any: ...


class Client(Protocol):
    """Starlette's TestClient or an httpx.Client against a real server."""

    def post(self, url: str, *, json: Any = ..., headers: Any = ...) -> Reply: ...

    def get(self, url: str, *, headers: Any = ...) -> Reply: ...


class AdminCalls:
    """The admin calls tests make through `client`, with the admin key."""

    client: Client

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


@dataclass
class InProcess(AdminCalls):
    """The real ASGI app driven in-process through Starlette's TestClient."""

    server: Server
    client: TestClient

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
