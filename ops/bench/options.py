"""The options every server benchmark shares, and the session they describe: a server started
with them and a driver with the overall time budget."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import click

from ops.bench.driver import Driver
from ops.bench.server import BenchServer, running_server
from tenants.errors import SqlfleetError


def serve_args(pool_capacity: int | None, worker_threads: int | None, extra: Sequence[str]) -> list[str]:
    """`sqlfleet serve` flags: --pool-capacity, --worker-threads, and each NAME=VALUE of --serve-arg."""
    args = [] if pool_capacity is None else ["--pool-capacity", str(pool_capacity)]
    args += [] if worker_threads is None else ["--worker-threads", str(worker_threads)]
    for item in extra:
        name, _, value = item.partition("=")
        args += [f"--{name.lstrip('-')}", value]
    return args


def common_options(default_timeout: float) -> Callable[[Any], Any]:
    """--json-out, --clients, --data-dir, --worker-threads, --serve-arg, --py-spy and --timeout."""

    def wrap(fn: Any) -> Any:
        options = [
            click.option(
                "--json-out",
                type=click.Path(dir_okay=False, path_type=Path),
                default=None,
                help="Where to write the JSON result [default: bench-<name>.json].",
            ),
            click.option(
                "--clients",
                type=click.IntRange(1, 16),
                default=1,
                show_default=True,
                help="Load generator processes (one leaves the other core to the server).",
            ),
            click.option(
                "--data-dir",
                type=click.Path(file_okay=False, path_type=Path),
                default=None,
                help="Server data dir, kept afterwards [default: a temp dir, removed].",
            ),
            click.option("--worker-threads", type=int, default=None, help="Server's --worker-threads."),
            click.option(
                "--serve-arg",
                multiple=True,
                metavar="NAME=VALUE",
                help="Any other `sqlfleet serve` flag, e.g. synchronous=NORMAL (repeatable).",
            ),
            click.option(
                "--py-spy",
                "py_spy_out",
                type=click.Path(dir_okay=False, path_type=Path),
                default=None,
                help="Record the server with py-spy (pip install py-spy) during the measured part: "
                ".svg flamegraph, .json speedscope, anything else collapsed stacks.",
            ),
            click.option(
                "--timeout",
                type=float,
                default=default_timeout,
                show_default=True,
                help="Overall time budget, seconds.",
            ),
        ]
        for option in reversed(options):
            fn = option(fn)
        return fn

    return wrap


@contextlib.contextmanager
def session(opts: dict[str, Any], pool_capacity: int | None) -> Iterator[tuple[BenchServer, Driver]]:
    """A server started with the common options, and a driver with their time budget. Any
    SqlfleetError becomes a one-line ClickException."""
    args = serve_args(pool_capacity, opts["worker_threads"], opts["serve_arg"])
    deadline = time.monotonic() + opts["timeout"]
    try:
        with running_server(opts["data_dir"], args) as server:
            yield server, Driver(server, opts["clients"], deadline, opts["py_spy_out"])
    except SqlfleetError as exc:
        raise click.ClickException(exc.message) from None
