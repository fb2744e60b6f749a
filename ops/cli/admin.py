"""`sqlfleet tenant ...` and `sqlfleet token ...`: the admin commands, clients of a running server.

Each command takes the options of `ops.cli.common` (--url, --admin-key (else the data dir's
admin.key), --timeout, --json). Output is a rich table, or with --json the server's JSON as it
came. Every failure is one line on stderr and exit status 1.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import click
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from ops.api_types import TenantInfo
from ops.cli.common import admin_command, console, output, print_json, progress, size
from ops.client import MAX_PAGE, AdminClient
from ops.errors import ClientError

# -- output ------------------------------------------------------------------------------------


def _tenant_table(tenants: Sequence[TenantInfo]) -> Table:
    table = Table("id", "state", "group", "size", "created")
    table.columns[3].justify = "right"
    for t in tenants:
        cells = (t["id"], t["state"], t["group"] or "-", size(t["size"]), t["created_at"])
        table.add_row(*(Text(str(c)) for c in cells))
    return table


def _info_table(info: TenantInfo) -> Table:
    table = Table("field", "value", show_header=False)
    for key, value in info.items():
        shown = size(value) if key == "size" and isinstance(value, int) else value
        table.add_row(Text(key), Text("-" if shown is None else str(shown)))
    return table


# -- commands ----------------------------------------------------------------------------------


@click.group()
def tenant() -> None:
    """Create, list, inspect and delete tenants on a running server."""


@tenant.command("create")
@click.argument("tenant_id", metavar="ID")
@click.option("--group", default=None, help="Schema group the tenant belongs to.")
@admin_command
def create(client: AdminClient, as_json: bool, tenant_id: str, group: str | None) -> None:
    """Create tenant ID (an empty database)."""
    info = client.create_tenant(tenant_id, group)
    output(info, as_json, _tenant_table([info]))


@tenant.command("list")
@click.option("--prefix", default="", help="Only ids starting with this.")
@click.option("--after", default=None, metavar="ID", help="Start after this id (the `next` cursor).")
@click.option(
    "--limit", type=click.IntRange(1, MAX_PAGE), default=None, help="Page size (server default 100)."
)
@click.option("--all", "everything", is_flag=True, help="Follow the cursor to the end of the list.")
@admin_command
def list_(
    client: AdminClient, as_json: bool, prefix: str, after: str | None, limit: int | None, everything: bool
) -> None:
    """List tenants by id, one page (or --all)."""
    if everything:
        tenants = list(client.iter_tenants(prefix, after, limit or MAX_PAGE))
        cursor = None
        body: object = {"tenants": tenants, "next": None}
    else:
        page = client.list_tenants(prefix, after, limit)
        tenants, cursor, body = page["tenants"], page["next"], page
    if as_json:
        print_json(body)
        return
    out = console()
    out.print(_tenant_table(tenants) if tenants else "no tenants")
    if cursor is not None:
        out.print(f"more after {cursor}: add --after {cursor}, or --all", soft_wrap=True)


@tenant.command("info")
@click.argument("tenant_id", metavar="ID")
@admin_command
def info(client: AdminClient, as_json: bool, tenant_id: str) -> None:
    """Show tenant ID: state, group, size, creation time."""
    body = client.tenant_info(tenant_id)
    output(body, as_json, _info_table(body))


@tenant.command("delete")
@click.argument("tenant_id", metavar="ID")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@admin_command
def delete(client: AdminClient, as_json: bool, tenant_id: str, yes: bool) -> None:
    """Delete tenant ID and all its data (asks first unless --yes)."""
    if not yes:
        if not sys.stdin.isatty():
            raise ClientError(f"not deleting {tenant_id!r}: no terminal to confirm on; pass --yes")
        shown = size(client.tenant_info(tenant_id)["size"])
        click.confirm(f"Delete tenant {tenant_id!r} ({shown}) and all its data?", abort=True)
    client.delete_tenant(tenant_id)
    # the server answers 204: --json prints what that means, as a document like every command's
    output({"id": tenant_id, "deleted": True}, as_json, f"deleted tenant {tenant_id}")


@click.group()
def token() -> None:
    """Mint and revoke tenant tokens (Ed25519 JWTs)."""


@token.command("mint")
@click.argument("tenant_id", metavar="TENANT")
@click.option("--access", type=click.Choice(["ro", "rw"]), default="rw", show_default=True)
@click.option(
    "--expires-in",
    type=click.IntRange(min=1),
    default=None,
    metavar="SECONDS",
    help="Lifetime in seconds (server default 3600).",
)
@admin_command
def mint(client: AdminClient, as_json: bool, tenant_id: str, access: str, expires_in: int | None) -> None:
    """Print a token for TENANT (only the token, so `$(sqlfleet token mint acme)` works)."""
    minted = client.mint_token(tenant_id, access, expires_in)
    if as_json:
        print_json(minted)
    else:
        click.echo(minted["token"])


@token.command("revoke")
@click.argument("tenant_id", metavar="TENANT")
@admin_command
def revoke(client: AdminClient, as_json: bool, tenant_id: str) -> None:
    """Make every token minted for TENANT so far stop working (the server's key stays; tokens
    minted afterwards work)."""
    revoked = client.revoke_tokens(tenant_id)
    if as_json:
        print_json(revoked)
    else:
        click.echo(f"revoked the tokens of tenant {tenant_id} minted before {revoked['revoked_at']}")


# -- data in and out -----------------------------------------------------------------------------


def _transfer_bar() -> Progress:
    return progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        transient=True,
    )


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _writable(file: Path, partial: Path) -> BinaryIO:
    """The new file `partial` (next to `file`), open for writing; ClientError when that cannot
    be, or `file` is something other than a regular file (a device, /proc)."""
    if file.exists() and not file.is_file():
        raise ClientError(f"cannot write {file}: not a regular file")
    try:
        return partial.open("wb")
    except OSError as exc:
        raise ClientError(f"cannot write {file}: cannot create {partial}: {_why(exc)}") from None


def _readable(file: Path) -> int:
    """The size of `file` once it is known to be a regular file this user can read; else
    ClientError."""
    if file.exists() and not file.is_file():  # a device or a pipe: no size to upload
        raise ClientError(f"cannot read {file}: not a regular file")
    try:
        with file.open("rb") as f:
            f.read(1)
        return file.stat().st_size
    except OSError as exc:
        raise ClientError(f"cannot read {file}: {_why(exc)}") from None


@tenant.command("export")
@click.argument("tenant_id", metavar="ID")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--sql", "as_sql", is_flag=True, help="SQL text (like sqlite3 .dump) instead of an SQLite file."
)
@admin_command
def export(client: AdminClient, as_json: bool, tenant_id: str, file: Path, as_sql: bool) -> None:
    """Save tenant ID to FILE: an SQLite file the sqlite3 CLI opens (or, with --sql, SQL text
    that recreates it). FILE appears only once complete."""
    partial = file.with_name(f".{file.name}.partial")
    out = _writable(file, partial)  # before asking the server for anything
    try:
        with _transfer_bar() as bar, out:
            task = bar.add_task(f"{'dumping' if as_sql else 'exporting'} {tenant_id}", total=None)
            try:
                done = client.export_tenant(
                    tenant_id,
                    out,
                    dump=as_sql,
                    progress=lambda n, total: bar.update(task, completed=n, total=total),
                )
            except OSError as exc:
                raise ClientError(f"cannot write {partial}: {_why(exc)}") from None
        try:
            partial.replace(file)
        except OSError as exc:
            raise ClientError(f"cannot move {partial} to {file}: {_why(exc)}") from None
    finally:
        partial.unlink(missing_ok=True)
    if as_json:
        print_json(done)
    else:
        click.echo(f"wrote {file} ({size(done['bytes'])}), tenant {tenant_id} as of {done['consistent_at']}")


@tenant.command("import")
@click.argument("tenant_id", metavar="ID")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--replace", is_flag=True, help="Replace the data of existing tenant ID (undoable by a restore)."
)
@click.option("--group", default=None, help="Schema group the new tenant joins (its schema synced to it).")
@admin_command
def import_(
    client: AdminClient, as_json: bool, tenant_id: str, file: Path, replace: bool, group: str | None
) -> None:
    """Make the SQLite file FILE tenant ID (new, or with --replace in place of its data). The
    server checks the file first: a bad one changes nothing and the error says why."""
    total = _readable(file)  # before asking the server for anything
    with _transfer_bar() as bar:
        task = bar.add_task(f"uploading {file.name}", total=total)
        try:
            result = client.import_tenant(
                tenant_id,
                file,
                replace,
                progress=lambda n, total: bar.update(task, completed=n, total=total),
                group=group,
            )
        except OSError as exc:
            raise ClientError(f"cannot read {file}: {_why(exc)}") from None
    if as_json:
        print_json(result)
    else:
        verb = "replaced the data of" if replace else "created"
        click.echo(f"{verb} tenant {tenant_id} from {file} ({size(result['imported']['bytes'])})")
