"""`sqlfleet bench`: the benchmark commands, loaded from `ops.bench` only when one runs (or its
help is shown), so the admin commands never import the benchmark harness.

While a benchmark runs, SIGTERM unwinds it like Ctrl-C does: every server it started is stopped
and every temp dir removed before it exits (status 128 + 15).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

import click


class _LazyBench(click.Group):
    def _commands(self) -> dict[str, click.Command]:
        from ops.bench import COMMANDS

        return {command.name or "": command for command in COMMANDS}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self._commands())

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self._commands().get(cmd_name)


def _terminated(sig: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + sig)


@click.group(cls=_LazyBench)
@click.pass_context
def bench(ctx: click.Context) -> None:
    """Benchmarks against a real server process on loopback; each prints a table and writes JSON."""
    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is threading.main_thread() and previous is not None:
        signal.signal(signal.SIGTERM, _terminated)
        ctx.call_on_close(lambda: signal.signal(signal.SIGTERM, previous))
