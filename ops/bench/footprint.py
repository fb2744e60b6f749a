"""What the server under test holds, per phase of a benchmark: its peak RSS and the peak disk
use of its data dir and of its local replica.

The peak RSS is the kernel's high-water mark (VmHWM), reset at the start of each phase (Linux:
writing 5 to /proc/PID/clear_refs), so a spike between two samples is not missed; where it
cannot be reset, the peak of psutil samples taken every tick stands in. Disk use is what the
files take on disk (allocated blocks), sampled every `every` seconds.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

import psutil

from ops.bench.server import BenchServer, kernel_peak_rss


def disk_bytes(root: Path, skip: Path | None = None) -> int:
    """Bytes the files under `root` (except those under `skip`) take on disk; files that
    vanish while it looks are not counted."""
    total = 0
    for folder, dirs, files in os.walk(root):
        if skip is not None and Path(folder) == skip:
            dirs.clear()
            continue
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_blocks * 512
    return total


class Footprint:
    """Peaks of one server, one phase at a time: `begin(name)`, `tick()` while it runs, `end()`.
    The replica is `DATA_DIR/replica` (the default replica_url); the data dir is counted
    without it."""

    def __init__(self, server: BenchServer, every: float = 0.5) -> None:
        self.server, self.every = server, every
        self.replica = server.data_dir / "replica"
        self.phases: dict[str, dict[str, Any]] = {}
        self._name: str | None = None
        self._rss = 0
        self._disk = (0, 0)
        self._sampled = 0.0
        self._resettable = True
        self.baseline = self._disk_now()

    def begin(self, name: str) -> None:
        self._name = name
        self._resettable = self._reset_high_water()
        self._rss = 0
        self._disk = (0, 0)
        self._sampled = 0.0
        self.tick()

    def tick(self) -> None:
        with contextlib.suppress(psutil.Error):
            self._rss = max(self._rss, self.server.ps.memory_info().rss)
        now = time.monotonic()
        if now - self._sampled >= self.every:
            self._sampled = now
            data, replica = self._disk_now()
            self._disk = (max(self._disk[0], data), max(self._disk[1], replica))

    def end(self) -> dict[str, Any]:
        """This phase's peaks (and the disk use at its end), recorded under its name."""
        self._sampled = 0.0
        self.tick()
        data, replica = self._disk_now()
        hwm = kernel_peak_rss(self.server.proc.pid) if self._resettable else 0
        phase = {
            "peak_rss_bytes": max(hwm, self._rss),
            "peak_rss_sampled_bytes": self._rss,
            "peak_data_bytes": self._disk[0],
            "peak_replica_bytes": self._disk[1],
            "end_data_bytes": data,
            "end_replica_bytes": replica,
        }
        if self._name is not None:
            self.phases[self._name] = phase
        self._name = None
        return phase

    def _disk_now(self) -> tuple[int, int]:
        return disk_bytes(self.server.data_dir, self.replica), disk_bytes(self.replica)

    def _reset_high_water(self) -> bool:
        try:
            Path(f"/proc/{self.server.proc.pid}/clear_refs").write_text("5")
        except OSError:
            return False
        return True
