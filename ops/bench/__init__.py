"""`sqlfleet bench ...`: benchmarks against a real `sqlfleet serve` process on loopback, driven
by `ops.bench.loadgen` worker processes; each prints a table and writes JSON. Imported only when
a benchmark runs (`ops.cli.bench` loads it lazily)."""

from __future__ import annotations

import click

from ops.bench.backups import bench_backups
from ops.bench.cluster import bench_cluster_command
from ops.bench.core import cold, fleet, hot
from ops.bench.isolation import isolation
from ops.bench.migrate import bench_migrate
from ops.bench.transfer import transfer

COMMANDS: list[click.Command] = [
    fleet,
    hot,
    cold,
    bench_backups,
    bench_migrate,
    isolation,
    transfer,
    bench_cluster_command,
]
