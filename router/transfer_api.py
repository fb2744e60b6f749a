"""Data in and out: export a tenant as an SQLite file, dump it as SQL, import an SQLite file.

Bounds. At most `max_transfers` run at once (429 transfers_busy past it); each holds one
temporary file of at most the tenant's size in DATA/system/transfers, which goes on every exit
path (finished, failed, client gone, timed out). The copy runs in steps in worker threads, each
step one job of the tenant (router.scheduler: its lane, its fair share), so the tenant's other
requests run between steps and its writers wait one step at most (`export_step_pages`). Bytes
move with aiofiles in pieces of PIECE bytes, so memory stays bounded whatever the size. These
routes stream more than `request_timeout` allows: each is bounded instead by `transfer_timeout`
from its start to its end, and by `transfer_idle_timeout` per piece (a client that stops
reading an export or sending an import loses it).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiofiles
import aiofiles.os
import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from router.admin_api import admin_context, refuse_handed_over
from router.auth import require_tenant
from router.context import Context, ctx
from router.errors import SlowBody
from router.import_group import join_group
from tenants import dump
from tenants.catalog import TenantRow
from tenants.errors import BadRequest, InsufficientStorage, SqlfleetError, TenantExists
from tenants.export import Exporter, ExportResult
from tenants.ids import is_name, validate_tenant_id
from tenants.imports import ImportTooLarge, check_upload
from tenants.rfc3339 import format_time
from tenants.state import TenantState

log = logging.getLogger(__name__)
PIECE = 1 << 20  # bytes per read, write and send


class TransfersBusy(SqlfleetError):
    status = 429
    code = "transfers_busy"


class TransferTimeout(SqlfleetError):
    """An export or dump could not make its copy within `transfer_timeout`."""

    status = 504
    code = "transfer_timeout"


# -- shared ------------------------------------------------------------------------------------


def _take_slot(c: Context) -> None:
    """One of the `max_transfers` slots, or TransfersBusy; give it back with `_give_slot`.
    Event loop only."""
    if c.transfers >= c.config.max_transfers:
        raise TransfersBusy(f"{c.transfers} exports, dumps or imports are running; retry shortly")
    c.transfers += 1


def _give_slot(c: Context) -> None:
    c.transfers -= 1


def _scratch(c: Context) -> Path:
    """A new private folder for one transfer's temporary file (in the data dir: its disk is
    bounded with the tenants'). Folders older than `transfer_timeout` belong to no running
    transfer (a crash left them): they go first."""
    root = c.fleet.layout.system_dir / "transfers"
    root.mkdir(mode=0o700, exist_ok=True)
    stale = time.time() - c.config.transfer_timeout - 60
    for folder in root.glob("transfer-*"):
        with contextlib.suppress(OSError):
            if folder.stat().st_mtime < stale:
                _remove(folder)
    return Path(tempfile.mkdtemp(dir=root, prefix="transfer-"))


def _remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def _check_room(c: Context, folder: Path, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise InsufficientStorage(f"the server has {free} bytes free; this transfer needs {needed}")


async def _copy(c: Context, tenant: str, folder: Path, started: float) -> ExportResult:
    """A consistent copy of `tenant` in `folder`, made in steps (tenants.export)."""
    info = await c.blocking(c.fleet.info, tenant)
    _check_room(c, folder, info.size)
    cfg = c.config
    exporter = await c.blocking(
        Exporter, c.fleet, tenant, folder / "export.db", cfg.export_step_pages, cfg.export_max_restarts
    )
    try:
        while not await c.for_tenant(tenant, exporter.step):
            if time.monotonic() - started > cfg.transfer_timeout:
                raise TransferTimeout(f"the copy of {tenant!r} took longer than {cfg.transfer_timeout:g} s")
    finally:
        await c.blocking(exporter.close)
    assert exporter.result is not None
    return exporter.result


class Streamed(Response):
    """A response whose body is `pieces`, sent one at a time within `idle` seconds each and
    `deadline` (monotonic) in all; `cleanup` runs however it ends (sent, client gone, timed out,
    cancelled)."""

    def __init__(
        self,
        pieces: AsyncIterator[bytes],
        cleanup: Callable[[], Awaitable[None]],
        headers: dict[str, str],
        media_type: str,
        idle: float,
        deadline: float,
    ) -> None:
        # not Response.__init__: it would add "Content-Length: 0" for the empty body it renders
        self.status_code = 200
        self.media_type = media_type
        self.background = None
        self.init_headers(headers)
        self.pieces = pieces
        self._cleanup: Callable[[], Awaitable[None]] | None = cleanup
        self.idle = idle
        self.deadline = deadline

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def watch() -> None:  # a client that goes away stops the transfer
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    group.cancel_scope.cancel()

                group.start_soon(watch)
                with anyio.move_on_after(self.deadline - time.monotonic()) as total:
                    try:
                        await self._send(send, scope["method"] == "HEAD")
                    except TimeoutError:
                        log.warning("transfer cut off: the client took no piece for %g s", self.idle)
                    except Exception:  # the answer has begun: all a client can see is a cut-off body
                        log.exception("transfer failed midway; the response is cut off")
                if total.cancelled_caught:
                    log.warning("transfer cut off after transfer_timeout")
                group.cancel_scope.cancel()
        finally:
            await self._clean()

    async def _clean(self) -> None:
        """Run `cleanup`, once, whatever cancels the caller."""
        cleanup, self._cleanup = self._cleanup, None
        if cleanup is not None:
            with anyio.CancelScope(shield=True):
                await cleanup()

    async def _send(self, send: Send, head: bool) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        pieces = self.pieces if not head else _nothing()
        piece = await anext(pieces, None)
        while piece is not None:
            following = await anext(pieces, None)
            if following is None:
                # the transfer slot (and its files) go before the client can have the whole body:
                # a client that starts its next transfer at once must find the slot free
                await self._clean()
            with anyio.fail_after(self.idle):
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            piece = following
        await self._clean()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield  # an empty async generator: a HEAD request gets the headers only


def _tenant(request: Request) -> tuple[Context, str]:
    c = ctx(request)
    tenant = validate_tenant_id(request.path_params["tenant"])
    require_tenant(c.principal(request), tenant)  # a read-only token may export
    return c, tenant


# -- export ------------------------------------------------------------------------------------


async def export(request: Request) -> Response:
    """The tenant as a plain SQLite file (rollback journal), consistent at one moment
    (X-Sqlfleet-Consistent-At), Content-Length bytes."""
    c, tenant = _tenant(request)
    started = time.monotonic()
    _take_slot(c)
    try:
        folder = await c.blocking(_scratch, c)
        try:
            result = await _copy(c, tenant, folder, started)
            handle = await aiofiles.open(result.path, "rb")
        finally:
            # the open handle keeps the file: from here any exit frees its disk
            await c.blocking(_remove, folder)
    except BaseException:
        _give_slot(c)
        raise

    async def pieces() -> AsyncIterator[bytes]:
        while piece := await handle.read(PIECE):
            yield piece

    async def cleanup() -> None:
        await handle.close()
        _give_slot(c)

    headers = {
        "Content-Length": str(result.size),
        "Content-Disposition": f'attachment; filename="{tenant}.db"',
        "X-Sqlfleet-Consistent-At": format_time(result.consistent_at),
        "X-Sqlfleet-Size": str(result.size),
        "X-Sqlfleet-Page-Size": str(result.page_size),
    }
    cfg = c.config
    deadline = started + cfg.transfer_timeout
    return Streamed(
        pieces(), cleanup, headers, "application/vnd.sqlite3", cfg.transfer_idle_timeout, deadline
    )


# -- dump --------------------------------------------------------------------------------------


async def dump_sql(request: Request) -> Response:
    """SQL text that recreates the tenant (tenants.dump), from a consistent copy."""
    c, tenant = _tenant(request)
    started = time.monotonic()
    _take_slot(c)
    try:
        folder = await c.blocking(_scratch, c)
        try:
            result = await _copy(c, tenant, folder, started)
            reader = await c.blocking(dump.Reader, result.path)
        except BaseException:
            await c.blocking(_remove, folder)
            raise
    except BaseException:
        _give_slot(c)
        raise

    async def pieces() -> AsyncIterator[bytes]:
        while piece := await c.blocking(reader.next_piece):
            yield piece

    async def cleanup() -> None:
        await c.blocking(reader.close)
        await c.blocking(_remove, folder)
        _give_slot(c)

    headers = {
        "Content-Disposition": f'attachment; filename="{tenant}.sql"',
        "X-Sqlfleet-Consistent-At": format_time(result.consistent_at),
    }
    cfg = c.config
    deadline = started + cfg.transfer_timeout
    return Streamed(
        pieces(), cleanup, headers, "application/sql; charset=utf-8", cfg.transfer_idle_timeout, deadline
    )


# -- import ------------------------------------------------------------------------------------


def _flag(request: Request, name: str) -> bool:
    value = request.query_params.get(name, "false")
    if value not in ("true", "false"):
        raise BadRequest(f"{name} must be true or false")
    return value == "true"


async def _receive_file(request: Request, path: Path, limit: int, idle: float, deadline: float) -> int:
    """Write the request body to `path` as it arrives; its size. Raises ImportTooLarge past
    `limit` bytes, SlowBody when a piece takes longer than `idle` or the whole past `deadline`."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ImportTooLarge(
            f"the upload is {declared} bytes; imports take at most {limit} (max_import_bytes)"
        )
    size = 0
    stream = request.stream().__aiter__()
    held = bytearray()  # the server hands the body over in small pieces: write PIECE at a time
    async with aiofiles.open(path, "wb") as out:
        while True:
            wait = min(idle, deadline - time.monotonic())
            with anyio.move_on_after(wait) as late:
                try:
                    piece = await stream.__anext__()
                except StopAsyncIteration:
                    break
            if late.cancelled_caught:
                raise SlowBody(f"the upload stalled for {idle:g} s or ran past transfer_timeout")
            size += len(piece)
            if size > limit:
                raise ImportTooLarge(f"the upload is over {limit} bytes (max_import_bytes)")
            held += piece
            if len(held) >= PIECE:
                await out.write(bytes(held))
                held.clear()
        await out.write(bytes(held))
    return size


async def import_file(request: Request) -> JSONResponse:
    """PUT an SQLite file as tenant `id` (new, or with ?replace=true in place of the existing
    one: undoable like a restore in place). Checked first (tenants.imports): a bad file is a
    4xx naming what is wrong and nothing changes."""
    c = admin_context(request)
    tenant = validate_tenant_id(request.path_params["tenant"])
    replace = _flag(request, "replace")
    group = request.query_params.get("group") or None
    if group is not None and not is_name(group):
        raise BadRequest("group must be a name like a tenant id")
    exists = await c.blocking(c.fleet.exists, tenant)
    if exists and not replace:
        raise TenantExists(f"tenant {tenant!r} exists: add ?replace=true to replace its data")
    if not replace:
        await refuse_handed_over(request, tenant)  # a cluster node: handed here, not restored yet
    if replace:
        row = await c.blocking(c.fleet.require, tenant, tuple(TenantState))  # TenantNotFound
        if group is not None and group != row.group:
            raise BadRequest(f"tenant {tenant!r} is in group {row.group!r}; a replacement stays in it")
        group = row.group
    started = time.monotonic()
    cfg = c.config
    _take_slot(c)
    try:
        folder = await c.blocking(_scratch, c)
        try:
            path = folder / "import.db"
            size = await _receive_file(
                request, path, cfg.max_import_bytes, cfg.transfer_idle_timeout, started + cfg.transfer_timeout
            )
            header = await c.blocking(check_upload, path, c.fleet.config, cfg.import_check_timeout)
            steps = 0
            if group is not None:
                plan = await c.blocking(
                    join_group, c.groups, group, path, c.fleet.config, cfg.import_check_timeout
                )
                steps = len(plan.steps)
            if replace:
                row = await c.blocking(_replace, c, tenant, path)
            else:
                row = await c.blocking(c.fleet.create, tenant, group, path)
        finally:
            await c.blocking(_remove, folder)
    finally:
        _give_slot(c)
    imported = {"bytes": size, "page_size": header.page_size, "replaced": replace, "schema_steps": steps}
    return JSONResponse({**row.to_json(), "imported": imported}, status_code=200 if replace else 201)


def _replace(c: Context, tenant: str, path: Path) -> TenantRow:
    """Put `path` in place of the tenant's file, after shipping every commit it has so the state
    before the import stays restorable (as a restore in place does). Its tokens keep working:
    same tenant, same incarnation; only its data changed."""
    if c.backups is not None:
        c.backups.ship_everything(tenant)
    return c.fleet.replace(tenant, path, "import")


ROUTES = [
    Route("/v1/tenants/{tenant}/export", export, methods=["GET"]),
    Route("/v1/tenants/{tenant}/dump", dump_sql, methods=["GET"]),
    Route("/v1/admin/tenants/{tenant}/import", import_file, methods=["PUT"]),
]
