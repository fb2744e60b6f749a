"""What the Hrana tests share: a real server's tenants and tokens."""

from __future__ import annotations

from dataclasses import dataclass

from tests.support.server import ServerProcess

IDLE_TIMEOUT = 2.0  # the real server's stream_idle_timeout: short, so expiry is testable


@dataclass
class Tenant:
    id: str
    rw: str
    ro: str


@dataclass
class Served:
    server: ServerProcess

    def tenant(self, tenant_id: str) -> Tenant:
        with self.server.client() as client:
            r = client.post("/v1/admin/tenants", json={"id": tenant_id})
            assert r.status_code == 201, r.text
            tokens = {
                access: client.post(
                    f"/v1/admin/tenants/{tenant_id}/tokens", json={"access": access, "expires_in": 3600}
                ).json()["token"]
                for access in ("rw", "ro")
            }
        return Tenant(tenant_id, tokens["rw"], tokens["ro"])


def url_of(served: Served, tenant: Tenant, form: str) -> str:
    """The client URL of `tenant`; `form` is `http-path`, `http-root`, `ws-path` or `ws-root`."""
    transport, shape = form.split("-")
    base = served.server.url if transport == "http" else "ws" + served.server.url.removeprefix("http")
    if shape == "root":
        return base
    return f"{base}/v1/tenants/{tenant.id}" + ("/" if transport == "http" else "")
