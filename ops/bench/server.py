"""The server under test: a `sqlfleet serve` child (launched by `ops.process`, as the tests
launch theirs) on a free loopback port over a fresh temp dir, and what we observe of it: peak
RSS, CPU time, pool metrics, its log (`ops.bench.profile` records it on request).

Whatever way a benchmark ends (done, failed, Ctrl-C, SIGTERM), the server is stopped and the temp
dir removed within a bound: `INTERRUPTED_GRACE` seconds for a graceful stop, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from ops.process import ServerProcess, scratch_dir, start_server

GRACE = 60.0  # a finished benchmark's server: shipping and checkpoints finish (exit code 0)
INTERRUPTED_GRACE = 10.0  # an interrupted or failed one: then SIGKILL

_POOL_METRICS = ("sqlfleet_pool_hits_total", "sqlfleet_pool_misses_total", "sqlfleet_pool_evictions_total")
_OPEN_METRICS = ("sqlfleet_pool_open_duration_seconds_sum", "sqlfleet_pool_open_duration_seconds_count")
_GAUGES = ("sqlfleet_pool_capacity", "sqlfleet_pool_open_handles")  # read by name


def kernel_peak_rss(pid: int) -> int:
    """The kernel's peak RSS of process `pid` in bytes (VmHWM; Linux), 0 if unreadable."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


@dataclass
class BenchServer(ServerProcess):
    """A running `sqlfleet serve` child and what we observe of it."""

    peak_rss: int = 0
    ps: psutil.Process = field(init=False)

    def __post_init__(self) -> None:
        self.ps = psutil.Process(self.proc.pid)

    @classmethod
    def observing(cls, process: ServerProcess) -> BenchServer:
        return cls(process.proc, process.url, process.data_dir, process.admin_key, process.log_path)

    def sample(self) -> None:
        """Record the current RSS; called every tick while load runs."""
        with contextlib.suppress(psutil.Error):
            self.peak_rss = max(self.peak_rss, self.ps.memory_info().rss)

    def high_water(self) -> int:
        """The kernel's peak RSS of the process (VmHWM), else the sampled peak."""
        self.sample()
        return max(self.peak_rss, kernel_peak_rss(self.proc.pid))

    def cpu_seconds(self) -> float:
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def metrics(self) -> dict[str, float]:
        """The pool's counters and gauges from /metrics."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        values = {}
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name in _POOL_METRICS or name in _OPEN_METRICS or name in _GAUGES:
                values[name] = float(value)
        return values


def pool_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """The pool's hits, misses, evictions and mean open time between two `metrics()` readings."""

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    hits, misses = int(delta(_POOL_METRICS[0])), int(delta(_POOL_METRICS[1]))
    opens, open_seconds = delta(_OPEN_METRICS[1]), delta(_OPEN_METRICS[0])
    return {
        "hits": hits,
        "misses": misses,
        "evictions": int(delta(_POOL_METRICS[2])),
        "hit_rate": round(hits / (hits + misses), 4) if hits + misses else 0.0,
        "open_ms_mean": round(open_seconds / opens * 1000, 3) if opens else 0.0,
    }


@contextlib.contextmanager
def running_server(
    data_dir: Path | None,
    serve_args: Sequence[str],
    env: Mapping[str, str] | None = None,
    wait: float = 60.0,
    admin_key: str | None = None,
) -> Iterator[BenchServer]:
    """A fresh server on a free loopback port over `data_dir` (kept) or a temp dir (removed),
    with `env` added to its environment and `admin_key` (default: a new random one). Raises
    LaunchError if it does not come up."""
    with scratch_dir("sqlfleet-bench-") as work:
        process = start_server(
            data_dir or work / "data",
            ["--log-level", "warning", *serve_args],
            admin_key=admin_key or "bench-" + secrets.token_urlsafe(16),
            env=env,
            log_path=work / "server.log",
            wait=wait,
        )
        finished = False
        try:
            yield BenchServer.observing(process)
            finished = True
        finally:
            process.terminate(GRACE if finished else INTERRUPTED_GRACE)
