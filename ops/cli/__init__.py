"""The `sqlfleet` command: `serve` runs the server; the other commands are its admin clients,
and `bench` its benchmarks. One module per command group; `ops.cli.common` holds what the admin
commands share."""

from __future__ import annotations

import click

from ops.cli.admin import tenant, token
from ops.cli.backups import backups, restore
from ops.cli.bench import bench
from ops.cli.cluster import cluster
from ops.cli.schema import group, migrate
from ops.cli.serve import serve
from ops.cli.status import status


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="sqlfleet", prog_name="sqlfleet", message="%(prog)s %(version)s")
def main() -> None:
    """sqlfleet: database-per-tenant SQLite hosting."""


for _command in (serve, tenant, token, restore, backups, group, migrate, status, cluster, bench):
    main.add_command(_command)
