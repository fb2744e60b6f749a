"""The options every server benchmark shares, and the session they describe: a server started
with them and a driver with the overall time budget."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import click

from ops.bench.driver import Driver, Profile
from ops.bench.profile import profile_options
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


def serve_overrides(extra: Sequence[str]) -> dict[str, str]:
    """Each NAME=VALUE of --serve-arg as a Settings override (`Settings.load` ignores names that
    are not settings)."""
    overrides = {}
    for item in extra:
        name, _, value = item.partition("=")
        overrides[name.lstrip("-").replace("-", "_")] = value
    return overrides


Decorator = Callable[[Any], Any]
PATH = click.Path(dir_okay=False, path_type=Path)

# Option shapes the benchmarks share; each takes the help text its benchmark gives.


def count(
    flag: str, default: int | None, help: str | None = None, *, minimum: int = 1, maximum: int | None = None
) -> Decorator:
    """An integer option of at least `minimum` (and at most `maximum`), its default shown."""
    kind = click.IntRange(minimum, maximum)
    return click.option(flag, type=kind, default=default, show_default=default is not None, help=help)


def seconds(flag: str, default: float, help: str | None = None, *, minimum: float = 0.1) -> Decorator:
    """A duration in seconds, at least `minimum`, its default shown."""
    return click.option(flag, type=click.FloatRange(minimum), default=default, show_default=True, help=help)


def json_out_option(name: str) -> Decorator:
    help = f"Where to write the JSON result [default: bench-{name}.json]."
    return click.option("--json-out", type=PATH, default=None, help=help)


def data_dir_option(help: str) -> Decorator:
    return click.option(
        "--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help=help
    )


def serve_arg_option(help: str) -> Decorator:
    return click.option("--serve-arg", multiple=True, metavar="NAME=VALUE", help=help)


def timeout_option(default: float) -> Decorator:
    return click.option(
        "--timeout", type=float, default=default, show_default=True, help="Overall time budget, seconds."
    )


def common_options(default_timeout: float) -> Decorator:
    """--json-out, --clients, --data-dir, --worker-threads, --serve-arg, --profile(-mode) and
    --timeout."""

    def wrap(fn: Any) -> Any:
        options = [
            json_out_option("<name>"),
            count(
                "--clients",
                1,
                "Load generator processes (one leaves the other core to the server).",
                maximum=16,
            ),
            data_dir_option("Server data dir, kept afterwards [default: a temp dir, removed]."),
            click.option("--worker-threads", type=int, default=None, help="Server's --worker-threads."),
            serve_arg_option("Any other `sqlfleet serve` flag, e.g. synchronous=NORMAL (repeatable)."),
            profile_options("Record the server with py-spy during the measured part."),
            timeout_option(default_timeout),
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
            profile = Profile(opts["profile"], opts["profile_mode"])
            yield server, Driver(server, opts["clients"], deadline, profile)
    except SqlfleetError as exc:
        raise click.ClickException(exc.message) from None
