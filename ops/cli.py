"""The `sqlfleet` command: `serve` runs the server; the other commands are its admin clients."""

from __future__ import annotations

from typing import Any

import click

from ops.admin_cli import tenant, token
from ops.backups_cli import backups, restore
from ops.schema_cli import group, migrate
from ops.settings import Settings, setting_fields
from ops.status_cli import status
from tenants.errors import SqlfleetError


def _setting_options(fn: Any) -> Any:
    """One --flag per setting (env SQLFLEET_<NAME> is read by Settings.load)."""
    for name, type_name, help_text in reversed(setting_fields()):
        kind: Any = int if type_name.startswith("int") else float if type_name.startswith("float") else str
        env = f"SQLFLEET_{name.upper()}"
        fn = click.option(
            f"--{name.replace('_', '-')}", name, type=kind, default=None, help=f"{help_text} [env {env}]"
        )(fn)
    return fn


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
def main() -> None:
    """sqlfleet: database-per-tenant SQLite hosting."""


@main.command()
@_setting_options
def serve(**flags: Any) -> None:
    """Run the server (every flag can also be set as SQLFLEET_<NAME>)."""
    from ops.server import serve as run

    try:
        settings = Settings.load(**flags)
    except SqlfleetError as exc:
        raise click.UsageError(exc.message) from None
    try:
        run(settings)
    except SqlfleetError as exc:
        raise click.ClickException(exc.message) from None


main.add_command(tenant)
main.add_command(token)
main.add_command(restore)
main.add_command(backups)
main.add_command(group)
main.add_command(migrate)
main.add_command(status)


from ops.bench import bench  # noqa: E402
from ops.bench_backups import bench_backups  # noqa: E402
from ops.bench_core import cold, fleet, hot  # noqa: E402

main.add_command(bench)
for command in (fleet, hot, cold):
    bench.add_command(command)
bench.add_command(bench_backups)

from ops.bench_migrate import bench_migrate  # noqa: E402

bench.add_command(bench_migrate)
