"""The benchmarks' client processes (ops.bench.loadgen's load generators, ops.bench.attacks'
attackers): each one forked, runs one coroutine to its end and sends back what it returned, or
its error, down a pipe.

Forked, not spawned: spawn would re-run `python -m ops`'s __main__. Ctrl-C reaches the whole
process group, so a worker ignores it (the parent decides when workers stop), and if the parent
dies without deciding, the kernel ends the worker with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

from ops.process import die_with_parent

Main = Callable[[], Coroutine[Any, Any, Any]]


@dataclass(frozen=True)
class Failures:
    """The exceptions `Workers.results` raises: workers still running past the deadline (how
    many), a worker that ended without a result, a worker whose coroutine raised (its error)."""

    late: Callable[[int], Exception]
    died: Callable[[], Exception]
    failed: Callable[[str], Exception]


class Workers:
    """Forked worker processes and the pipes their results come back on. Not thread-safe."""

    def __init__(self) -> None:
        self.context = multiprocessing.get_context("fork")
        self._procs: list[tuple[Any, Any]] = []

    def start(self, main: Main, nice: int = 0) -> None:
        """A worker running `asyncio.run(main())`, its niceness raised by `nice` (best effort)."""
        receive, send = self.context.Pipe(duplex=False)
        proc = self.context.Process(target=_run, args=(main, nice, send, os.getpid()), daemon=True)
        proc.start()
        send.close()
        self._procs.append((proc, receive))

    def results(
        self,
        deadline: float,
        failures: Failures,
        on_tick: Callable[[], None] | None = None,
        tick: float = 0.1,
    ) -> Iterator[Any]:
        """Each worker's result as it arrives, calling `on_tick` every `tick` seconds meanwhile.
        Raises what `failures` makes when a worker is still running at `deadline`
        (time.monotonic()), ended without a result, or failed."""
        pending = [receive for _, receive in self._procs]
        while pending:
            if time.monotonic() > deadline:
                raise failures.late(len(pending))
            ready: list[Any] = multiprocessing.connection.wait(pending, timeout=tick)
            for conn in ready:
                pending.remove(conn)
                try:
                    kind, payload = conn.recv()
                except EOFError:
                    raise failures.died() from None
                if kind != "ok":
                    raise failures.failed(payload)
                yield payload
            if on_tick is not None:
                on_tick()

    def close(self, grace: float = 5.0) -> None:
        """End every worker: each has `grace` seconds to end by itself, then gets SIGTERM, then
        SIGKILL. Idempotent."""
        for proc, receive in self._procs:
            receive.close()
            proc.join(timeout=grace)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
            if proc.is_alive() and proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.join(timeout=5)
        self._procs = []


def _run(main: Main, nice: int, pipe: Any, parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent)
    if nice:
        with contextlib.suppress(OSError):
            os.nice(nice)
    try:
        pipe.send(("ok", asyncio.run(main())))
    except BaseException as exc:
        pipe.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        pipe.close()
