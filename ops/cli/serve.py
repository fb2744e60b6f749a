"""`sqlfleet serve`: run the server. One flag per setting; click passes each flag's text as typed
and `Settings.load` parses and checks it, exactly as it parses the `SQLFLEET_<NAME>` variable."""

from __future__ import annotations

from typing import Any

import click

from ops.settings import Settings, setting_fields
from tenants.errors import SqlfleetError


def _metavar(type_name: str) -> str:
    # What --help shows; the value itself stays text until Settings parses it.
    return "INTEGER" if type_name.startswith("int") else "FLOAT" if type_name.startswith("float") else "TEXT"


def setting_options(fn: Any) -> Any:
    """One --flag per setting, its value passed on as text (env SQLFLEET_<NAME> is read by
    Settings.load), its help showing the default Settings has. The flag's own default stays
    None: a flag not given must leave the variable, then that default, to Settings."""
    for name, type_name, help_text, default in reversed(setting_fields()):
        env = f"SQLFLEET_{name.upper()}"
        fn = click.option(
            f"--{name.replace('_', '-')}",
            name,
            default=None,
            metavar=_metavar(type_name),
            help=f"{help_text} [env {env}; default: {'unset' if default is None else default}]",
        )(fn)
    return fn


@click.command()
@setting_options
def serve(**flags: Any) -> None:
    """Run the server (every flag can also be set as SQLFLEET_<NAME>)."""
    from cluster.errors import NodeIdInUse
    from ops.node_guard import ForeignReplica
    from ops.server import CannotListen
    from ops.server import serve as run

    try:
        settings = Settings.load(**flags)
    except SqlfleetError as exc:
        raise click.UsageError(exc.message) from None
    try:
        run(settings)
    except CannotListen as exc:  # the --host/--port given cannot be had: one line, exit 2
        raise _Refused(exc.message) from None
    except (ForeignReplica, NodeIdInUse) as exc:  # settings that point at what they must not: a usage error
        raise click.UsageError(exc.message) from None
    except SqlfleetError as exc:
        raise click.ClickException(exc.message) from None


class _Refused(click.ClickException):
    """A start refused over a setting before anything started: `Error: ...` on one line (no
    usage text: the flags parsed fine), exit 2 as a usage error."""

    exit_code = 2
