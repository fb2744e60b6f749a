"""What every admin command shares: the options (--url, --admin-key, --data-dir, --timeout,
--json), an open `AdminClient`, one way to turn an error into one stderr line (exit status 1;
click's own usage errors keep their status 2), and the output helpers."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console, RenderableType
from rich.progress import Progress, ProgressColumn

from ops.client import DEFAULT_URL, AdminClient, check_url
from ops.errors import ApiError, ClientError, InvalidArgument
from ops.settings import Settings
from tenants.errors import SqlfleetError

ADMIN_KEY_FILE = "admin.key"  # the name ops.keys gives the generated key inside the data dir

Command = Callable[..., None]

ADMIN_OPTIONS = [
    click.option(
        "--url",
        envvar="SQLFLEET_URL",
        default=DEFAULT_URL,
        show_default=True,
        metavar="URL",
        help="The server's base URL [env SQLFLEET_URL].",
    ),
    click.option(
        "--admin-key",
        envvar="SQLFLEET_ADMIN_KEY",
        default=None,
        metavar="KEY",
        help="Admin API key [env SQLFLEET_ADMIN_KEY]; unset: read DATA_DIR/admin.key, which a "
        "server on the same data dir generated.",
    ),
    click.option(
        "--data-dir",
        envvar="SQLFLEET_DATA_DIR",
        type=click.Path(path_type=Path),
        default=None,
        help="Where to find admin.key when no key is given [env SQLFLEET_DATA_DIR; "
        "default: the server's, $XDG_DATA_HOME/sqlfleet, else ~/.local/share/sqlfleet].",
    ),
    click.option(
        "--timeout",
        type=click.FloatRange(min=0, min_open=True),
        default=30.0,
        show_default=True,
        help="Seconds to wait for the server.",
    ),
    click.option("--json", "as_json", is_flag=True, help="Print the server's JSON instead of a table."),
]


def admin_command(fn: Command) -> Command:
    """Give `fn(client, as_json, ...)` the admin options, an open client, and the one place where
    errors become a single stderr line."""

    @functools.wraps(fn)
    def run(
        url: str, admin_key: str | None, data_dir: Path | None, timeout: float, as_json: bool, **kw: Any
    ) -> None:
        source = _key_option_source()
        try:
            check_url(url)  # a usage error: before a key file is looked for
            if not admin_key:
                admin_key, source = key_from_file(data_dir)
            with AdminClient(url, admin_key, timeout) as client:
                fn(client, as_json, **kw)
        except InvalidArgument as exc:
            raise click.UsageError(exc.message) from None
        except SqlfleetError as exc:
            raise click.ClickException(describe(exc, source)) from None

    command: Command = run
    for option in reversed(ADMIN_OPTIONS):
        command = option(command)
    return command


def _key_option_source() -> str:
    """Which of the two gave --admin-key its value: the flag, or the variable."""
    given = click.get_current_context().get_parameter_source("admin_key")
    return "SQLFLEET_ADMIN_KEY" if given is click.core.ParameterSource.ENVIRONMENT else "--admin-key"


def read_file(path: Path) -> bytes:
    """The bytes of the local file `path` named on the command line; ClientError saying why
    when it cannot be read (missing, not allowed, not a regular file: a device or a pipe)."""
    if path.exists() and not path.is_file():
        raise ClientError(f"cannot read {path}: not a regular file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ClientError(f"cannot read {path}: {exc.strerror or exc}") from None


def read_text(path: Path) -> str:
    """`read_file` as UTF-8 text (SQL scripts); ClientError when it is not."""
    try:
        return read_file(path).decode()
    except UnicodeDecodeError as exc:
        raise ClientError(f"cannot read {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def key_from_file(data_dir: Path | None) -> tuple[str, str]:
    """(key, where it came from) from DATA_DIR/admin.key (default: the server's default data
    dir, the one `sqlfleet serve` and scripts/serve use). Raises ClientError when there is no
    usable key file."""
    path = (data_dir or Settings().data_dir).expanduser() / ADMIN_KEY_FILE
    try:
        key = path.read_text().strip()
    except FileNotFoundError:
        where = "" if data_dir else " (the default data dir)"
        raise ClientError(
            f"no admin key: {path} does not exist{where}; set SQLFLEET_ADMIN_KEY (or --admin-key), "
            "or SQLFLEET_DATA_DIR (or --data-dir) to the server's data dir"
        ) from None
    except (OSError, ValueError) as exc:
        raise ClientError(f"cannot read the admin key from {path}: {exc}") from None
    if not key:
        raise ClientError(f"no admin key: {path} is empty")
    return key, str(path)


def describe(exc: SqlfleetError, key_source: str) -> str:
    """The one line a failure prints; a rejected key names where the key came from."""
    if not isinstance(exc, ApiError):
        return exc.message
    text = f"{exc.message} (HTTP {exc.http_status} {exc.error_code})"
    if exc.http_status == 401:
        return f"the server rejected the admin key from {key_source}: {text}"
    if exc.http_status == 403:
        return f"the key from {key_source} is not the server's admin key: {text}"
    return text


# -- output ------------------------------------------------------------------------------------


def print_json(body: object) -> None:
    click.echo(json.dumps(body, indent=2))


def output(body: object, as_json: bool, table: RenderableType) -> None:
    """`body` as JSON with --json, else `table` (a rich table, or text with markup) on stdout."""
    if as_json:
        print_json(body)
    else:
        console().print(table)


def progress(*columns: str | ProgressColumn, transient: bool = False, quiet: bool = False) -> Progress:
    """A progress display on stderr, so stdout stays the result (a table, or JSON with --json);
    none with `quiet`. A `transient` one (erased when done) is drawn on a terminal only:
    elsewhere rich would still end it with an empty line, a stray "\n" in a log or a pipe. A
    lasting one leaves its last state there, once."""
    err = Console(stderr=True)
    return Progress(
        *columns, console=err, transient=transient, disable=quiet or (transient and not err.is_terminal)
    )


def console() -> Console:
    """A console for stdout. Piped output would be cut to 80 columns; a table is only as wide
    as its cells anyway."""
    wide = None if sys.stdout.isatty() else 1000
    return Console(width=wide, highlight=False, soft_wrap=False)


def size(n: int) -> str:
    """Bytes for people: `512 B`, `4.0 KiB`, ... up to TiB."""
    amount = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if amount < 1024:
            return f"{n} B" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} TiB"
