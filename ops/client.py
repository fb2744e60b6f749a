"""A small typed client for the admin API (DESIGN.md "Admin API"); the `sqlfleet` CLI's transport.

Every call raises `ServerUnreachable` when no HTTP answer came back, `ApiError` when the server
answered with an error, and `ClientError` for anything else that went wrong on this side.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import TracebackType
from typing import Any, TypedDict, cast

import httpx

from tenants.errors import SqlfleetError
from tenants.ids import validate_tenant_id

DEFAULT_URL = "http://127.0.0.1:8080"
# The server's largest page (router.admin_api.MAX_PAGE, not imported: the CLI stays light);
# a test keeps the two equal.
MAX_PAGE = 1000


class ClientError(SqlfleetError):
    """The admin client could not do what was asked; `message` is one line fit for a terminal."""

    code = "client_error"


class ServerUnreachable(ClientError):
    code = "server_unreachable"


class ApiError(ClientError):
    """The server answered with an error: its HTTP status, its error code and its message.
    (`http_status`/`error_code`, since `status`/`code` are the class-level fields of every error.)"""

    code = "api_error"

    def __init__(self, http_status: int, error_code: str, message: str) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.error_code = error_code


class TenantInfo(TypedDict):
    id: str
    created_at: str
    state: str
    group: str | None
    size: int
    error: str | None


class TenantPage(TypedDict):
    tenants: list[TenantInfo]
    next: str | None


class MintedToken(TypedDict):
    token: str
    tenant: str
    access: str
    expires_at: int


class RestoreResult(TypedDict):
    tenant: str
    restored_to: str
    generation: str
    commits_applied: int


class BackupGeneration(TypedDict):
    id: str
    started: str


class BackupSnapshot(TypedDict):
    generation: str
    lsn: int
    taken: str
    bytes: int


class BackupInfo(TypedDict):
    tenant: str
    earliest: str | None
    latest: str
    generations: list[BackupGeneration]
    snapshots: list[BackupSnapshot]
    deleted: bool
    backlog_bytes: int


class VerifyResult(TypedDict):
    tenant: str
    ok: bool
    pages: int
    differing_pages: list[int]
    restored_to: str


class RestorableTenant(TypedDict):
    id: str
    exists: bool


class AdminClient:
    """The admin API over one connection pool. Not thread-safe; use it in a `with` block."""

    def __init__(self, url: str, admin_key: str, timeout: float = 30.0) -> None:
        """Raises ClientError for a URL that is not http(s) or a key that cannot go in a header."""
        if not url.startswith(("http://", "https://")):
            raise ClientError(f"invalid URL {url!r}: it must start with http:// or https://")
        if not admin_key.isascii() or not admin_key.isprintable() or " " in admin_key:
            raise ClientError("the admin key holds characters that cannot be sent in an HTTP header")
        self.url = url.rstrip("/")
        self.timeout = timeout
        try:
            self._http = httpx.Client(
                base_url=self.url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=timeout
            )
        except httpx.InvalidURL as exc:
            raise ClientError(f"invalid URL {url!r}: {exc}") from None

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- tenants -------------------------------------------------------------------------------

    def create_tenant(self, tenant_id: str, group: str | None = None) -> TenantInfo:
        """The new tenant's info. The server validates the id (ApiError 400) and answers 409 if
        the tenant exists."""
        body = self._json("POST", "/v1/admin/tenants", json={"id": tenant_id, "group": group})
        return cast(TenantInfo, body)

    def list_tenants(
        self, prefix: str = "", after: str | None = None, limit: int | None = None
    ) -> TenantPage:
        """One page, ordered by id; pass its `next` as `after` to get the following one."""
        params: dict[str, str | int] = {"prefix": prefix}
        if after is not None:
            params["after"] = after
        if limit is not None:
            params["limit"] = limit
        body = self._json("GET", "/v1/admin/tenants", params=params)
        if not isinstance(body.get("tenants"), list):
            raise ClientError(f"unexpected answer from {self.url}: no tenant list")
        return cast(TenantPage, body)

    def iter_tenants(
        self, prefix: str = "", after: str | None = None, limit: int = MAX_PAGE
    ) -> Iterator[TenantInfo]:
        """Every tenant from `after` on, following `next` page by page (`limit` per request).
        Raises ClientError if the server's cursor ever fails to advance, so this always ends."""
        while True:
            page = self.list_tenants(prefix, after, limit)
            yield from page["tenants"]
            cursor = page["next"]
            if cursor is None:
                return
            if not isinstance(cursor, str) or (after is not None and cursor <= after):
                raise ClientError(f"the server's list cursor did not advance past {after!r}")
            after = cursor

    def tenant_info(self, tenant_id: str) -> TenantInfo:
        return cast(TenantInfo, self._json("GET", _tenant_path(tenant_id)))

    def delete_tenant(self, tenant_id: str) -> None:
        """Delete the tenant and its files. Not idempotent: a second call is ApiError 404."""
        self._call("DELETE", _tenant_path(tenant_id))

    # -- tokens --------------------------------------------------------------------------------

    def mint_token(self, tenant_id: str, access: str = "rw", expires_in: int | None = None) -> MintedToken:
        """A signed token for the tenant; without `expires_in` the server's default lifetime."""
        body: dict[str, Any] = {"access": access}
        if expires_in is not None:
            body["expires_in"] = expires_in
        answer = self._json("POST", _tenant_path(tenant_id) + "/tokens", json=body)
        if not isinstance(answer.get("token"), str):
            raise ClientError(f"unexpected answer from {self.url}: no token")
        return cast(MintedToken, answer)

    # -- backups -------------------------------------------------------------------------------

    def restore(
        self, tenant_id: str, timestamp: str = "latest", as_tenant: str | None = None
    ) -> RestoreResult:
        """Restore `tenant_id` to its state after the last commit at or before `timestamp`
        (RFC 3339 or "latest"): in place, or into the new tenant `as_tenant`. ApiError 404 when
        there is no restore point, 409 when `as_tenant` exists or backups are off."""
        if as_tenant is not None:
            validate_tenant_id(as_tenant)
        body = {"timestamp": timestamp, "as": as_tenant}
        answer = self._json("POST", _tenant_path(tenant_id) + "/restore", json=body)
        if not isinstance(answer.get("restored_to"), str):
            raise ClientError(f"unexpected answer from {self.url}: no restored_to")
        return cast(RestoreResult, answer)

    def backups(self, tenant_id: str) -> BackupInfo:
        """The tenant's restore points: earliest, latest, generations, snapshots."""
        return cast(BackupInfo, self._json("GET", _tenant_path(tenant_id) + "/backups"))

    def verify_backup(self, tenant_id: str) -> VerifyResult:
        """Restore the latest state aside and compare it page by page with the live database.
        A mismatch is an answer (`ok` false), not an error."""
        answer = self._json("POST", _tenant_path(tenant_id) + "/backups/verify")
        if not isinstance(answer.get("ok"), bool):
            raise ClientError(f"unexpected answer from {self.url}: no verdict")
        return cast(VerifyResult, answer)

    def rebuild_backup_catalog(self) -> int:
        """Recreate the server's backup catalog from the bucket; returns the segments read."""
        segments = self._json("POST", "/v1/admin/backups/rebuild").get("segments")
        if not isinstance(segments, int):
            raise ClientError(f"unexpected answer from {self.url}: no segment count")
        return segments

    def restorable_tenants(self) -> list[RestorableTenant]:
        """Every tenant the bucket can restore (not deleted), and whether it exists locally."""
        tenants = self._json("GET", "/v1/admin/backups/tenants").get("tenants")
        if not isinstance(tenants, list):
            raise ClientError(f"unexpected answer from {self.url}: no tenant list")
        return cast(list[RestorableTenant], tenants)

    # -- transport -----------------------------------------------------------------------------

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise ServerUnreachable(
                f"sqlfleet at {self.url} did not answer within {self.timeout:g}s"
            ) from None
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
            raise ServerUnreachable(f"cannot reach sqlfleet at {self.url}: {reason}") from None
        if response.is_error:
            raise _api_error(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self._call(method, path, **kwargs)
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise ClientError(f"unexpected answer from {self.url}{path}: not a JSON object")
        return body


def _tenant_path(tenant_id: str) -> str:
    # Checked here, not only by the server: an id like "../x" or "a/b" would change the URL itself.
    return f"/v1/admin/tenants/{validate_tenant_id(tenant_id)}"


def _api_error(response: httpx.Response) -> ApiError:
    """The server's `{"error": {"code", "message"}}`, or a summary of whatever else came back
    (a proxy's HTML page, say)."""
    try:
        error = response.json()["error"]
        code, message = error["code"], error["message"]
    except (ValueError, KeyError, TypeError):
        text = " ".join(response.text.split())[:200] or response.reason_phrase
        return ApiError(response.status_code, "http_error", f"{response.request.url}: {text}")
    return ApiError(response.status_code, str(code), str(message))
