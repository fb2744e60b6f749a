"""A small typed client for the admin API (DESIGN.md "Admin API"); the `sqlfleet` CLI's transport.

Every call raises `ServerUnreachable` when no HTTP answer came back, `ApiError` when the server
answered with an error, and `ClientError` for anything else that went wrong on this side.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast

import httpx

from cluster.config import NAME as NODE_NAME
from ops.api_types import (
    BackupInfo,
    ClusterStatus,
    FleetRestore,
    GroupInfo,
    ImportResult,
    Migration,
    MintedToken,
    Readiness,
    RekeyBatch,
    RestorableTenant,
    RestoreResult,
    RevokedTokens,
    Rollout,
    SyncPlan,
    TenantInfo,
    TenantMigrations,
    TenantPage,
    Transferred,
    VerifyResult,
)
from ops.errors import ApiError, ClientError, InvalidArgument, ServerUnreachable
from tenants.errors import InvalidTenantId
from tenants.ids import is_name, validate_tenant_id

DEFAULT_URL = "http://127.0.0.1:8080"
# The server's largest page (router.admin_api.MAX_PAGE, not imported: the CLI stays light);
# a test keeps the two equal.
MAX_PAGE = 1000
PIECE = 1 << 20  # bytes per piece of an export or import
Progress = Callable[[int, int | None], None]
IMPORT_CHECK_WAIT = 300.0  # seconds an import may wait for its answer once the file is sent


def check_url(url: str) -> str:
    """`url` if it can name a server: http(s) with a host; InvalidArgument (a usage error,
    refused before anything is asked) if not."""
    if not url.startswith(("http://", "https://")):
        raise InvalidArgument(f"invalid URL {url!r}: it must start with http:// or https://")
    try:
        host = httpx.URL(url).host
    except httpx.InvalidURL as exc:
        raise InvalidArgument(f"invalid URL {url!r}: {exc}") from None
    if not host:
        raise InvalidArgument(f"invalid URL {url!r}: it names no host")
    return url


class AdminClient:
    """The admin API over one connection pool. Not thread-safe; use it in a `with` block."""

    def __init__(self, url: str, admin_key: str, timeout: float = 30.0) -> None:
        """Raises InvalidArgument for a URL that is not an http(s) one (`check_url`),
        ClientError for a key that cannot go in a header."""
        check_url(url)
        if not admin_key.isascii() or not admin_key.isprintable() or " " in admin_key:
            raise ClientError("the admin key holds characters that cannot be sent in an HTTP header")
        self.url = url.rstrip("/")
        self.timeout = timeout
        try:
            self._http = httpx.Client(
                base_url=self.url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=timeout
            )
        except httpx.InvalidURL as exc:
            raise InvalidArgument(f"invalid URL {url!r}: {exc}") from None

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
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

    def revoke_tokens(self, tenant_id: str) -> RevokedTokens:
        """Make every token minted for the tenant so far stop working (ApiError 404 if there is
        no such tenant); tokens minted afterwards work."""
        answer = self._json("POST", _tenant_path(tenant_id) + "/tokens/revoke")
        if not isinstance(answer.get("revoked_at"), str):
            raise ClientError(f"unexpected answer from {self.url}: no revocation time")
        return cast(RevokedTokens, answer)

    # -- backups -------------------------------------------------------------------------------

    def restore(
        self, tenant_id: str, timestamp: str = "latest", as_tenant: str | None = None
    ) -> RestoreResult:
        """Restore `tenant_id` to its state after the last commit at or before `timestamp`
        (RFC 3339 or "latest"): in place, or into the new tenant `as_tenant`. ApiError 404 when
        there is no restore point, 409 when `as_tenant` exists or backups are off."""
        if as_tenant is not None:
            _tenant_id(as_tenant)
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

    def restorable_tenants(self, deleted: bool = False) -> list[RestorableTenant]:
        """Every tenant the bucket can restore, and whether it exists locally; with `deleted`
        also those whose last event is their deletion (`deleted`: when; restoring one
        undeletes it)."""
        params = {"deleted": "true"} if deleted else None
        tenants = self._json("GET", "/v1/admin/backups/tenants", params=params).get("tenants")
        if not isinstance(tenants, list):
            raise ClientError(f"unexpected answer from {self.url}: no tenant list")
        return cast(list[RestorableTenant], tenants)

    def restore_fleet(self) -> FleetRestore:
        """Disaster recovery's first step: the server puts back the schema groups it lacks from
        the fleet metadata in the bucket; `warning` says when old tenant tokens will not work."""
        answer = self._json("POST", "/v1/admin/backups/fleet/restore")
        if not isinstance(answer.get("groups"), dict) or not isinstance(answer.get("tokens"), dict):
            raise ClientError(f"unexpected answer from {self.url}: no fleet restore summary")
        return cast(FleetRestore, answer)

    def rekey_backups(self, after: str | None = None, limit: int | None = None) -> RekeyBatch:
        """One batch of re-encrypting the server's backups with its current key: up to `limit`
        segments after the cursor `after`. Call again with the answer's `next` until it is None.
        ApiError 409 when the server has no encryption keys (or no backups)."""
        body: dict[str, Any] = {"after": after}
        if limit is not None:
            body["limit"] = limit
        answer = self._json("POST", "/v1/admin/backups/rekey", json=body)
        if not isinstance(answer.get("checked"), int) or "next" not in answer:
            raise ClientError(f"unexpected answer from {self.url}: no rekey progress")
        return cast(RekeyBatch, answer)

    # -- schema groups and migrations ----------------------------------------------------------

    def create_group(self, name: str, schema: str | None = None, template: bytes | None = None) -> GroupInfo:
        """A new group whose template is built by the SQL script `schema`, or is the SQLite file
        `template`, or is empty. ApiError 409 if the group exists."""
        if schema is not None and template is not None:
            raise ClientError("give a schema script or a template database, not both")
        body: dict[str, Any] = {"name": name}
        if schema is not None:
            body["schema"] = schema
        if template is not None:
            body["template"] = base64.b64encode(template).decode()
        return cast(GroupInfo, self._json("POST", "/v1/admin/groups", json=body))

    def list_groups(self) -> list[GroupInfo]:
        groups = self._json("GET", "/v1/admin/groups").get("groups")
        if not isinstance(groups, list):
            raise ClientError(f"unexpected answer from {self.url}: no group list")
        return cast(list[GroupInfo], groups)

    def group(self, name: str) -> GroupInfo:
        """The group's migrations and how many of them are released."""
        return cast(GroupInfo, self._json("GET", _group_path(name)))

    def group_schema(self, name: str, released: bool = False) -> str:
        """The group's newest schema as SQL (every registered migration applied), or with
        `released` the template's."""
        answer = self._json("GET", _group_path(name, "/schema"), params={"released": int(released)})
        if not isinstance(answer.get("sql"), str):
            raise ClientError(f"unexpected answer from {self.url}: no schema")
        return str(answer["sql"])

    def add_migration(self, group: str, name: str, sql: str) -> Migration:
        """Register a SQL migration (`0001_slug`, or `slug` to be numbered next). Not idempotent."""
        body = {"name": name, "sql": sql}
        return cast(Migration, self._json("POST", _group_path(group, "/migrations"), json=body))

    def add_sync(self, group: str, name: str, schema: str, allow_drop: bool = False) -> Migration:
        """Register a declarative step: every tenant's schema becomes `schema`'s."""
        body = {"name": name, "sql": schema, "kind": "sync", "allow_drop": allow_drop}
        return cast(Migration, self._json("POST", _group_path(group, "/migrations"), json=body))

    def plan(self, group: str, schema: str, allow_drop: bool = False, tenant: str | None = None) -> SyncPlan:
        """The SQL that would turn the group's newest schema (or `tenant`'s) into `schema`'s."""
        body: dict[str, Any] = {"schema": schema, "allow_drop": allow_drop}
        if tenant:
            body["tenant"] = tenant
        return cast(SyncPlan, self._json("POST", _group_path(group, "/plan"), json=body))

    def tenant_migrations(self, group: str, tenant: str) -> TenantMigrations:
        """Which of the group's migrations `tenant` has applied, and which are pending."""
        path = _group_path(group, f"/tenants/{_tenant_id(tenant)}")
        return cast(TenantMigrations, self._json("GET", path))

    # -- rollouts ----------------------------------------------------------------------------------

    def start_rollout(
        self,
        group: str,
        dry_run: bool = False,
        canary: int | None = None,
        max_failures: int | None = None,
        concurrency: int | None = None,
    ) -> Rollout:
        """Start rolling the group's migrations out (template first, then every tenant); returns
        at once with the running rollout. ApiError 409 if one is running already."""
        options = {
            "dry_run": dry_run,
            "canary": canary,
            "max_failures": max_failures,
            "concurrency": concurrency,
        }
        body = {k: v for k, v in options.items() if v not in (None, False)}
        return cast(Rollout, self._json("POST", _group_path(group, "/rollouts"), json=body))

    def rollouts(self, group: str) -> list[Rollout]:
        """The group's rollouts, newest first, without their failures and plans."""
        rollouts = self._json("GET", _group_path(group, "/rollouts")).get("rollouts")
        if not isinstance(rollouts, list):
            raise ClientError(f"unexpected answer from {self.url}: no rollout list")
        return cast(list[Rollout], rollouts)

    def rollout(self, group: str, rollout_id: str) -> Rollout:
        return cast(Rollout, self._json("GET", _rollout_path(group, rollout_id)))

    def stop_rollout(self, group: str, rollout_id: str) -> Rollout:
        """Ask a running rollout to stop; tenants already migrated stay migrated, nothing is
        released until it is resumed. Returns at once (the rollout's state turns from running
        once its workers are done)."""
        return cast(Rollout, self._json("POST", _rollout_path(group, rollout_id) + "/stop"))

    def resume_rollout(
        self, group: str, rollout_id: str, max_failures: int | None = None, concurrency: int | None = None
    ) -> Rollout:
        """Go on with the group's newest rollout, stopped or interrupted: the tenants it has not
        handled, those that failed again, then the release. `max_failures` and `concurrency`
        replace its own. Returns at once with the running rollout. ApiError 409 when it ended,
        a newer one superseded it, or one is running."""
        options = {"max_failures": max_failures, "concurrency": concurrency}
        body = {k: v for k, v in options.items() if v is not None}
        return cast(Rollout, self._json("POST", _rollout_path(group, rollout_id) + "/resume", json=body))

    def abort_rollout(self, group: str, rollout_id: str) -> Rollout:
        """End a running, stopped or interrupted rollout for good, releasing nothing; waits for
        its workers. The answer's `migrated_tenants` keep the migration. ApiError 409 when it
        already ended."""
        return cast(Rollout, self._json("POST", _rollout_path(group, rollout_id) + "/abort"))

    # -- data in and out -------------------------------------------------------------------------

    def export_tenant(
        self, tenant_id: str, out: BinaryIO, dump: bool = False, progress: Progress | None = None
    ) -> Transferred:
        """Write the tenant as an SQLite file (as SQL text with `dump`) to `out`, streamed;
        `progress(done, total)` after each piece (total None for a dump: its size is not known
        ahead). `timeout` bounds each wait for a piece, not the whole transfer."""
        kind = "dump" if dump else "export"
        path = f"/v1/tenants/{_tenant_id(tenant_id)}/{kind}"
        with self._transport(streamed=True), self._http.stream("GET", path) as response:
            if response.is_error:
                response.read()
                raise _api_error(response)
            total = None if dump else int(response.headers["content-length"])
            done = 0
            for piece in response.iter_bytes(PIECE):
                out.write(piece)
                done += len(piece)
                if progress is not None:
                    progress(done, total)
        if total is not None and done != total:
            raise ClientError(f"the export of {tenant_id!r} was cut off after {done} of {total} bytes")
        return {"bytes": done, "consistent_at": response.headers.get("x-sqlfleet-consistent-at", "")}

    def import_tenant(
        self,
        tenant_id: str,
        source: Path,
        replace: bool = False,
        progress: Progress | None = None,
        group: str | None = None,
    ) -> ImportResult:
        """Upload the SQLite file `source` as tenant `tenant_id` (new, in schema `group` if
        given; with `replace`, in place of the existing tenant's data). ApiError 400/413 names
        what is wrong with the file (nothing changed then), 409 when the tenant exists and
        `replace` is not given."""
        size = source.stat().st_size

        def pieces() -> Iterator[bytes]:
            done = 0
            with source.open("rb") as f:
                while piece := f.read(PIECE):
                    done += len(piece)
                    yield piece
                    if progress is not None:
                        progress(done, size)

        headers = {"Content-Type": "application/vnd.sqlite3", "Content-Length": str(size)}
        params = {"replace": "true"} if replace else {}
        if group is not None:
            params["group"] = group
        path = _tenant_path(tenant_id) + "/import"
        # the answer comes after the server checked the file (import_check_timeout, 120 s by default)
        wait = httpx.Timeout(self.timeout, read=max(self.timeout, IMPORT_CHECK_WAIT))
        body = self._json("PUT", path, content=pieces(), headers=headers, params=params, timeout=wait)
        return cast(ImportResult, body)

    # -- the cluster -----------------------------------------------------------------------------

    def cluster_status(self, tenant_id: str | None = None) -> ClusterStatus:
        """The cluster as the server sees it (with where `tenant_id` lives). Raises ApiError
        (409 cluster_disabled on a server that is not a cluster node)."""
        params = {"tenant": tenant_id} if tenant_id is not None else {}
        return cast(ClusterStatus, self._json("GET", "/v1/admin/cluster", params=params))

    def drain_node(self, node: str, undo: bool = False) -> ClusterStatus:
        """Mark `node` draining (its slots move to the other nodes), or not any more."""
        if not NODE_NAME.fullmatch(node):  # as with tenant ids: "/" or ".." would change the URL
            raise ClientError(f"invalid node id {node!r}")
        path = f"/v1/admin/cluster/nodes/{node}/drain"
        return cast(ClusterStatus, self._json("DELETE" if undo else "POST", path))

    # -- the server ------------------------------------------------------------------------------

    def readiness(self) -> Readiness:
        """GET /readyz. Not ready (HTTP 503) is an answer here, not an error."""
        response = self._send("GET", "/readyz")
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("checks"), dict):
            if response.is_error:
                raise _api_error(response)
            raise ClientError(f"unexpected answer from {self.url}/readyz: no checks")
        body["ready"] = response.status_code == 200
        return cast(Readiness, body)

    def metrics(self) -> str:
        """The Prometheus exposition of GET /metrics, as text."""
        return self._call("GET", "/metrics").text

    # -- transport -----------------------------------------------------------------------------

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request; raises ServerUnreachable when no answer came back, whatever its status."""
        with self._transport():
            return self._http.request(method, path, **kwargs)

    @contextlib.contextmanager
    def _transport(self, streamed: bool = False) -> Iterator[None]:
        """Transport errors as ServerUnreachable: before any answer came, or (`streamed`)
        while a streamed response was being read."""
        try:
            yield
        except httpx.TimeoutException:
            wait = "stopped answering for" if streamed else "did not answer within"
            raise ServerUnreachable(f"sqlfleet at {self.url} {wait} {self.timeout:g}s") from None
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
            where = "lost" if streamed else "cannot reach"
            raise ServerUnreachable(f"{where} sqlfleet at {self.url}: {reason}") from None

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self._send(method, path, **kwargs)
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


def _tenant_id(tenant_id: str) -> str:
    """`tenant_id` if it is one; InvalidArgument (a usage error) if not."""
    try:
        return validate_tenant_id(tenant_id)
    except InvalidTenantId as exc:
        raise InvalidArgument(exc.message) from None


def _tenant_path(tenant_id: str) -> str:
    # Checked here, not only by the server: an id like "../x" or "a/b" would change the URL itself.
    return f"/v1/admin/tenants/{_tenant_id(tenant_id)}"


def _group_path(name: str, suffix: str = "") -> str:
    # As with tenant ids: a name with "/" or ".." would change the URL itself.
    if not is_name(name):
        raise InvalidArgument(f"invalid group name {name!r}")
    return f"/v1/admin/groups/{name}{suffix}"


def _rollout_path(group: str, rollout_id: str) -> str:
    if not rollout_id.replace("-", "").isalnum():
        raise InvalidArgument(f"invalid rollout id {rollout_id!r}")
    return _group_path(group, f"/rollouts/{rollout_id}")


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
