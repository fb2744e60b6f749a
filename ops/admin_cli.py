"""`sqlfleet tenant ...` and `sqlfleet token ...`: the admin commands, clients of a running server.

Each command takes --url, --admin-key (else the data dir's admin.key), --timeout and --json.
Output is a rich table, or with --json the server's JSON as it came. Every failure is one line on
stderr and exit status 1 (click's own usage errors keep their status 2).
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ops.client import DEFAULT_URL, MAX_PAGE, AdminClient, ApiError, ClientError, TenantInfo
from ops.settings import Settings
from tenants.errors import SqlfleetError

ADMIN_KEY_FILE = "admin.key"  # the name ops.keys gives the generated key inside the data dir

Command = Callable[..., None]

_ADMIN_OPTIONS = [
    click.option("--url", envvar="SQLFLEET_URL", default=DEFAULT_URL, show_default=True, metavar="URL",
                 help="The server's base URL [env SQLFLEET_URL]."),
    click.option("--admin-key", envvar="SQLFLEET_ADMIN_KEY", default=None, metavar="KEY",
                 help="Admin API key [env SQLFLEET_ADMIN_KEY]; unset: read DATA_DIR/admin.key."),
    click.option("--data-dir", envvar="SQLFLEET_DATA_DIR", type=click.Path(path_type=Path), default=None,
                 help="Where to find admin.key when no key is given [env SQLFLEET_DATA_DIR; "
                 "default: the server's default data dir]."),
    click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
                 help="Seconds to wait for the server."),
    click.option("--json", "as_json", is_flag=True, help="Print the server's JSON instead of a table."),
]  # fmt: skip


def _admin_command(fn: Command) -> Command:
    """Give `fn(client, as_json, ...)` the admin options, an open client, and the one place where
    errors become a single stderr line."""

    @functools.wraps(fn)
    def run(
        url: str, admin_key: str | None, data_dir: Path | None, timeout: float, as_json: bool, **kw: Any
    ) -> None:
        source = "--admin-key / SQLFLEET_ADMIN_KEY"
        try:
            if not admin_key:
                admin_key, source = _key_from_file(data_dir)
            with AdminClient(url, admin_key, timeout) as client:
                fn(client, as_json, **kw)
        except SqlfleetError as exc:
            raise click.ClickException(_describe(exc, source)) from None

    command: Command = run
    for option in reversed(_ADMIN_OPTIONS):
        command = option(command)
    return command


def _key_from_file(data_dir: Path | None) -> tuple[str, str]:
    """(key, where it came from). Raises ClientError when there is no usable key file."""
    path = (data_dir or Settings().data_dir).expanduser() / ADMIN_KEY_FILE
    try:
        key = path.read_text().strip()
    except FileNotFoundError:
        raise ClientError(
            f"no admin key: set SQLFLEET_ADMIN_KEY or pass --admin-key ({path} does not exist)"
        ) from None
    except (OSError, ValueError) as exc:
        raise ClientError(f"cannot read the admin key from {path}: {exc}") from None
    if not key:
        raise ClientError(f"no admin key: {path} is empty")
    return key, str(path)


def _describe(exc: SqlfleetError, key_source: str) -> str:
    if not isinstance(exc, ApiError):
        return exc.message
    text = f"{exc.message} (HTTP {exc.http_status} {exc.error_code})"
    if exc.http_status == 401:
        return f"the server rejected the admin key from {key_source}: {text}"
    if exc.http_status == 403:
        return f"the key from {key_source} is not the server's admin key: {text}"
    return text


# -- output ------------------------------------------------------------------------------------


def _print_json(body: object) -> None:
    click.echo(json.dumps(body, indent=2))


def _console() -> Console:
    # Piped output would be cut to 80 columns; a table is only as wide as its cells anyway.
    wide = None if sys.stdout.isatty() else 1000
    return Console(width=wide, highlight=False, soft_wrap=False)


def _size(n: int) -> str:
    amount = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if amount < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    raise AssertionError("unreachable")


def _tenant_table(tenants: Sequence[TenantInfo]) -> Table:
    table = Table("id", "state", "group", "size", "created")
    table.columns[3].justify = "right"
    for t in tenants:
        cells = (t["id"], t["state"], t["group"] or "-", _size(t["size"]), t["created_at"])
        table.add_row(*(Text(str(c)) for c in cells))
    return table


def _info_table(info: TenantInfo) -> Table:
    table = Table("field", "value", show_header=False)
    for key, value in info.items():
        shown = _size(value) if key == "size" and isinstance(value, int) else value
        table.add_row(Text(key), Text("-" if shown is None else str(shown)))
    return table


# -- commands ----------------------------------------------------------------------------------


@click.group()
def tenant() -> None:
    """Create, list, inspect and delete tenants on a running server."""


@tenant.command("create")
@click.argument("tenant_id", metavar="ID")
@click.option("--group", default=None, help="Schema group the tenant belongs to.")
@_admin_command
def create(client: AdminClient, as_json: bool, tenant_id: str, group: str | None) -> None:
    """Create tenant ID (an empty database)."""
    info = client.create_tenant(tenant_id, group)
    if as_json:
        _print_json(info)
    else:
        _console().print(_tenant_table([info]))


@tenant.command("list")
@click.option("--prefix", default="", help="Only ids starting with this.")
@click.option("--after", default=None, metavar="ID", help="Start after this id (the `next` cursor).")
@click.option(
    "--limit", type=click.IntRange(1, MAX_PAGE), default=None, help="Page size (server default 100)."
)
@click.option("--all", "everything", is_flag=True, help="Follow the cursor to the end of the list.")
@_admin_command
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
        _print_json(body)
        return
    console = _console()
    console.print(_tenant_table(tenants) if tenants else "no tenants")
    if cursor is not None:
        console.print(f"more after {cursor}: add --after {cursor}, or --all", soft_wrap=True)


@tenant.command("info")
@click.argument("tenant_id", metavar="ID")
@_admin_command
def info(client: AdminClient, as_json: bool, tenant_id: str) -> None:
    """Show tenant ID: state, group, size, creation time."""
    body = client.tenant_info(tenant_id)
    if as_json:
        _print_json(body)
    else:
        _console().print(_info_table(body))


@tenant.command("delete")
@click.argument("tenant_id", metavar="ID")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@_admin_command
def delete(client: AdminClient, as_json: bool, tenant_id: str, yes: bool) -> None:
    """Delete tenant ID and all its data (asks first unless --yes)."""
    if not yes:
        if not sys.stdin.isatty():
            raise ClientError(f"not deleting {tenant_id!r}: no terminal to confirm on; pass --yes")
        size = _size(client.tenant_info(tenant_id)["size"])
        click.confirm(f"Delete tenant {tenant_id!r} ({size}) and all its data?", abort=True)
    client.delete_tenant(tenant_id)
    if not as_json:  # the server answers 204, so --json prints nothing
        click.echo(f"deleted tenant {tenant_id}")


@click.group()
def token() -> None:
    """Mint tenant tokens (Ed25519 JWTs)."""


@token.command("mint")
@click.argument("tenant_id", metavar="TENANT")
@click.option("--access", type=click.Choice(["ro", "rw"]), default="rw", show_default=True)
@click.option("--expires-in", type=click.IntRange(min=1), default=None, metavar="SECONDS",
              help="Lifetime in seconds (server default 3600).")  # fmt: skip
@_admin_command
def mint(client: AdminClient, as_json: bool, tenant_id: str, access: str, expires_in: int | None) -> None:
    """Print a token for TENANT (only the token, so `$(sqlfleet token mint acme)` works)."""
    minted = client.mint_token(tenant_id, access, expires_in)
    if as_json:
        _print_json(minted)
    else:
        click.echo(minted["token"])
