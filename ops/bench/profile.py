"""`--profile` for every benchmark: a py-spy recording of the process under test (a server, or
the bench itself for in-process ones) while the measured part runs.

py-spy samples from outside, every thread at once, so it sees what cProfile cannot here: the
server runs in another process, and its work (requests, the shipper's flush loop) in threads of
their own. The output format follows the file's suffix: `.svg` a flamegraph, `.json` speedscope,
`.trace` Chrome's trace viewer, anything else collapsed stacks (one line per stack and a sample
count: grep-able, and what flamegraph.pl reads). Stacks carry their thread's id, so the flush
thread can be told from the request workers. `--profile-mode gil` keeps only samples that hold
the GIL (what a thread waits for shows as the gap to `active`); `idle` adds idle threads.

py-spy reads the process without stopping it (`--nonblocking`): stopping all of a server's
threads 200 times a second cost the 10k-tenant fleet loop three quarters of its throughput (145
instead of ~650 req/s), so the profile showed a different program. An unstopped read can tear
an odd stack; those are few, and the throughput stays what the bench measures without --profile.

py-spy is not a dependency of the server: `pip install 'sqlfleet[bench]'` (or `scripts/bench`)
brings it.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from ops.bench.errors import BenchError
from ops.process import spawn, stop

MODES = ("active", "gil", "idle")
RATE = 200  # samples per second
_FORMATS = {".svg": "flamegraph", ".json": "speedscope", ".trace": "chrometrace"}


def profile_options(help: str) -> Callable[[Any], Any]:
    """--profile PATH (with --py-spy, its older name) and --profile-mode."""

    def wrap(fn: Any) -> Any:
        fn = click.option(
            "--profile-mode",
            type=click.Choice(MODES),
            default="active",
            show_default=True,
            help="Which samples --profile keeps: of running threads, only of those holding the GIL, "
            "or idle ones too.",
        )(fn)
        return click.option(
            "--profile",
            "--py-spy",
            "profile",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            help=help + " Suffix: .svg flamegraph, .json speedscope, .trace Chrome trace, else "
            "collapsed stacks; thread ids included. Needs py-spy (pip install 'sqlfleet[bench]').",
        )(fn)

    return wrap


def executable() -> str:
    """py-spy's path. Raises BenchError if it is not installed."""
    exe = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if exe is None:
        raise BenchError("--profile needs py-spy: pip install 'sqlfleet[bench]' (or run scripts/bench)")
    return exe


def command(exe: str, pid: int, out: Path, mode: str = "active") -> list[str]:
    """The py-spy command line that records `pid` into `out`."""
    fmt = _FORMATS.get(out.suffix, "raw")
    cmd = [exe, "record", "--pid", str(pid), "--output", str(out), "--format", fmt]
    cmd += ["--rate", str(RATE), "--threads", "--nonblocking"]
    if mode == "gil":
        cmd.append("--gil")
    elif mode == "idle":
        cmd.append("--idle")
    return cmd


@contextlib.contextmanager
def profiling(pid: int, out: Path | None, mode: str = "active") -> Iterator[None]:
    """Record `pid` with py-spy into `out` while the body runs (nothing if `out` is None).
    Raises BenchError if py-spy is missing or cannot attach."""
    if out is None:
        yield
        return
    cmd = command(executable(), pid, out, mode)
    with tempfile.TemporaryFile() as errors:  # a file, not a pipe: py-spy's chatter never blocks it
        proc = spawn(cmd, stdout=subprocess.DEVNULL, stderr=errors)
        try:
            time.sleep(1.0)  # let it attach before the measured part starts
            if proc.poll() is not None:
                errors.seek(0)
                raise BenchError(f"py-spy failed: {errors.read().decode(errors='replace').strip()}")
            yield
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(60)
            stop(proc, 5)
