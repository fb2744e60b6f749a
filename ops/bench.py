"""The `sqlfleet bench` harness: a real `sqlfleet serve` process under load, measured.

Every benchmark (ops/bench_core.py, ops/bench_backups.py) starts the server on a free loopback
port over a fresh data dir, drives it over HTTP from `ops.loadgen` worker processes (so client and
server each get a core), prints a table and writes JSON. The server is always stopped at the end,
on error and on Ctrl-C too.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import httpx
import psutil
from rich.console import Console
from rich.table import Table

from ops.loadgen import Phase, PhaseResult, render, run_phase
from ops.process import free_port, terminate
from tenants.errors import SqlfleetError

GIB = 1 << 30
QUERY_SQL = "SELECT v FROM kv WHERE k = ?"
# Idempotent, so `--reuse` can re-apply it to tenants an interrupted run left without it.
_CREATE_SQL = "CREATE TABLE IF NOT EXISTS kv (k INTEGER PRIMARY KEY, v TEXT NOT NULL)"
_ROWS_SQL = (
    "INSERT OR IGNORE INTO kv(k, v) "
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
    "SELECT i, 'value-' || i FROM n"
)
_POOL_METRICS = ("sqlfleet_pool_hits_total", "sqlfleet_pool_misses_total", "sqlfleet_pool_evictions_total")
_OPEN_METRICS = ("sqlfleet_pool_open_duration_seconds_sum", "sqlfleet_pool_open_duration_seconds_count")
_GAUGES = ("sqlfleet_pool_capacity", "sqlfleet_pool_open_handles")  # read by name


class BenchError(SqlfleetError):
    code = "bench"


# -- the server under test -----------------------------------------------------------------------


@dataclass
class BenchServer:
    """A `python -m ops serve` child process and what we observe of it."""

    proc: subprocess.Popen[bytes]
    url: str
    admin_key: str
    log_path: Path
    peak_rss: int = 0
    ps: psutil.Process = field(init=False)

    def __post_init__(self) -> None:
        self.ps = psutil.Process(self.proc.pid)

    def sample(self) -> None:
        """Record the current RSS; called every tick while load runs."""
        with contextlib.suppress(psutil.Error):
            self.peak_rss = max(self.peak_rss, self.ps.memory_info().rss)

    def high_water(self) -> int:
        """The kernel's peak RSS of the process (VmHWM), else the sampled peak."""
        self.sample()
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return max(self.peak_rss, int(line.split()[1]) * 1024)
        return self.peak_rss

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

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, timeout: float = 60.0) -> None:
        terminate(self.proc, timeout)


@contextlib.contextmanager
def running_server(
    data_dir: Path | None, serve_args: Sequence[str], wait: float = 60.0
) -> Iterator[BenchServer]:
    """A fresh server on a free loopback port; stopped (and a temp data dir removed) on exit."""
    work = Path(tempfile.mkdtemp(prefix="sqlfleet-bench-"))
    port, key = free_port(), "bench-" + secrets.token_urlsafe(16)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SQLFLEET_")}
    env["SQLFLEET_ADMIN_KEY"] = key
    repo = str(Path(__file__).resolve().parent.parent)  # so `-m ops` works from any cwd
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH")) if p)
    cmd = [
        sys.executable,
        "-m",
        "ops",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir or work / "data"),
        "--log-level",
        "warning",
        *serve_args,
    ]
    log_path = work / "server.log"
    server: BenchServer | None = None
    try:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        server = BenchServer(proc, f"http://127.0.0.1:{port}", key, log_path)
        _wait_ready(server, wait)
        yield server
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


def _wait_ready(server: BenchServer, wait: float) -> None:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise BenchError(f"server exited with {server.proc.returncode}:\n{server.log_tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.url}/readyz", timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    raise BenchError(f"server not ready after {wait:g} s:\n{server.log_tail()}")


# -- driving it ----------------------------------------------------------------------------------


@dataclass
class Driver:
    """Runs load phases against `server` within one overall time budget."""

    server: BenchServer
    clients: int
    deadline: float
    profile_to: Path | None = None

    def measuring(self) -> contextlib.AbstractContextManager[None]:
        """Wraps the measured part: records it with py-spy if `profile_to` is set."""
        if self.profile_to is None:
            return contextlib.nullcontext()
        return py_spy(self.server.proc.pid, self.profile_to)

    def run(
        self,
        name: str,
        requests: Sequence[bytes],
        total: int,
        concurrency: int,
        order: Sequence[int] | None = None,
        seconds: float | None = None,
        keep_responses: bool = False,
    ) -> PhaseResult:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise BenchError(f"time budget exhausted before phase {name}")
        phase = Phase(name, requests, total, concurrency, min(left, seconds or left), order, keep_responses)
        return run_phase(self.server.url, phase, self.clients, on_tick=self.server.sample)

    def request(self, method: str, path: str, body: Any, token: str | None = None) -> bytes:
        headers = {"Authorization": f"Bearer {token or self.server.admin_key}"}
        if body is None:
            return render(self.server.url, method, path, headers)
        headers["Content-Type"] = "application/json"
        return render(self.server.url, method, path, headers, json.dumps(body).encode())

    def setup(
        self, ids: Sequence[str], rows: int, concurrency: int, reuse: bool = False, chunk: int = 10_000
    ) -> tuple[list[str], dict[str, Any]]:
        """Create `ids`, each with a `kv` table of `rows` rows, and mint an rw token each, a chunk
        at a time (progress is printed per chunk). With `reuse`, ids that exist already are kept
        and the (idempotent) table set-up is re-applied to them, in case an interrupted run left
        them without it. Returns the tokens (in `ids` order) and each step's count and rate.
        Raises BenchError on any failure."""
        steps: dict[str, dict[str, float]] = {}
        tokens: list[str] = []
        started = time.monotonic()
        for start in range(0, len(ids), chunk):
            part = ids[start : start + chunk]
            self._step(steps, "create", part, concurrency, {201, 409} if reuse else {201})
            self._step(steps, "schema", part, concurrency, {200}, rows)
            minted = self._step(steps, "token", part, concurrency, {200})
            tokens += [json.loads(minted.responses[i][1])["token"] for i in range(len(part))]
            if len(ids) > chunk:
                spent = time.monotonic() - started
                click.echo(f"setup: {len(tokens):,}/{len(ids):,} tenants ready in {spent:.0f} s", err=True)
        for step in steps.values():
            step["per_s"] = round(step["count"] / step["seconds"], 1) if step["seconds"] else 0.0
            step["seconds"] = round(step["seconds"], 3)
        return tokens, steps

    def _step(
        self,
        steps: dict[str, dict[str, float]],
        step: str,
        ids: Sequence[str],
        concurrency: int,
        ok: set[int],
        rows: int = 0,
    ) -> PhaseResult:
        body: dict[str, Any]
        if step == "create":
            requests = [self.request("POST", "/v1/admin/tenants", {"id": t}) for t in ids]
        elif step == "schema":
            body = {"statements": [{"sql": _CREATE_SQL}, {"sql": _ROWS_SQL, "params": [rows]}]}
            requests = [self.request("POST", f"/v1/tenants/{t}/batch", body) for t in ids]
        else:
            body = {"access": "rw", "expires_in": 86400}
            requests = [self.request("POST", f"/v1/admin/tenants/{t}/tokens", body) for t in ids]
        result = self.run(step, requests, len(ids), concurrency, keep_responses=True)
        done = steps.setdefault(step, {"count": 0, "seconds": 0.0})
        done["count"] += result.sent
        done["seconds"] += result.elapsed
        if result.sent < len(ids) or set(result.statuses) - ok:
            raise BenchError(
                f"setup step {step}: {result.sent} of {len(ids)} sent in {result.elapsed:.0f} s, "
                f"statuses {dict(result.statuses)}{' (time budget exhausted)' if result.timed_out else ''}"
                f"; steps so far {steps}\n{self.server.log_tail()}"
            )
        return result

    def query_requests(self, ids: Sequence[str], tokens: Sequence[str], rows: int) -> list[bytes]:
        return [
            self.request("POST", f"/v1/tenants/{t}/query", {"sql": QUERY_SQL, "params": [i % rows + 1]}, tok)
            for i, (t, tok) in enumerate(zip(ids, tokens, strict=True))
        ]


def latency_ms(latencies: Sequence[float]) -> dict[str, float]:
    """p50/p99 (nearest rank), mean and max, in milliseconds."""
    ordered = sorted(latencies)
    if not ordered:
        return {"p50": 0.0, "p99": 0.0, "mean": 0.0, "max": 0.0}

    def rank(q: float) -> float:
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)] * 1000

    mean = sum(ordered) / len(ordered) * 1000
    return {
        "p50": round(rank(0.5), 3),
        "p99": round(rank(0.99), 3),
        "mean": round(mean, 3),
        "max": round(ordered[-1] * 1000, 3),
    }


def pool_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
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


def summary(results: Sequence[PhaseResult], server_cpu: float) -> dict[str, Any]:
    """Requests, errors, rate, latency, and the CPU each side spent (per request and in cores)."""
    latencies: list[float] = []
    for r in results:
        latencies.extend(r.latencies)
    sent, seconds = sum(r.sent for r in results), sum(r.elapsed for r in results)
    client_cpu = sum(r.client_cpu for r in results)
    return {
        "requests": sent,
        "errors": sum(r.errors for r in results),
        "req_per_s": round(sent / seconds, 1) if seconds else 0.0,
        "latency_ms": latency_ms(latencies),
        "server_cpu_us_per_request": round(server_cpu / sent * 1e6, 1) if sent else 0.0,
        "server_cores": round(server_cpu / seconds, 2) if seconds else 0.0,
        "client_cores": round(client_cpu / seconds, 2) if seconds else 0.0,
    }


def _serve_args(pool_capacity: int | None, worker_threads: int | None, extra: Sequence[str]) -> list[str]:
    args = [] if pool_capacity is None else ["--pool-capacity", str(pool_capacity)]
    args += [] if worker_threads is None else ["--worker-threads", str(worker_threads)]
    for item in extra:
        name, _, value = item.partition("=")
        args += [f"--{name.lstrip('-')}", value]
    return args


# -- output and the command line -----------------------------------------------------------------

Row = tuple[str, str, str, bool | None]  # label, value, target, met (None: no target)


def emit(result: dict[str, Any], rows: list[Row], json_out: Path) -> None:
    """Print the table and write `result` (with each target's verdict) as JSON."""
    result["targets"] = {
        label: {"target": target, "met": met} for label, _, target, met in rows if met is not None
    }
    table = Table(title=f"sqlfleet bench {result['bench']}")
    for column in ("metric", "value", "target", ""):
        table.add_column(column)
    for label, value, target, met in rows:
        table.add_row(label, value, target, "" if met is None else "[green]ok" if met else "[red]MISSED")
    Console().print(table)
    json_out.write_text(json.dumps(result, indent=2) + "\n")
    click.echo(f"wrote {json_out}")


@contextlib.contextmanager
def py_spy(pid: int, out: Path) -> Iterator[None]:
    """Record the server with py-spy (not a dependency: `pip install py-spy`) while the body runs.
    The format follows the suffix: .svg flamegraph, .json speedscope, else collapsed stacks."""
    exe = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if exe is None:
        raise BenchError("py-spy is not installed (pip install py-spy)")
    fmt = {".svg": "flamegraph", ".json": "speedscope"}.get(out.suffix, "raw")
    cmd = [exe, "record", "--pid", str(pid), "--output", str(out), "--format", fmt, "--rate", "200"]
    with tempfile.TemporaryFile() as errors:  # a file, not a pipe: py-spy's chatter never blocks it
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errors)
        time.sleep(1.0)  # let it attach before the measured part starts
        if proc.poll() is not None:
            errors.seek(0)
            raise BenchError(f"py-spy failed: {errors.read().decode(errors='replace').strip()}")
        try:
            yield
        finally:
            proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def common_options(default_timeout: float) -> Callable[[Any], Any]:
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
    serve_args = _serve_args(pool_capacity, opts["worker_threads"], opts["serve_arg"])
    deadline = time.monotonic() + opts["timeout"]
    try:
        with running_server(opts["data_dir"], serve_args) as server:
            yield server, Driver(server, opts["clients"], deadline, opts["py_spy_out"])
    except SqlfleetError as exc:
        raise click.ClickException(exc.message) from None


def json_out(opts: dict[str, Any], name: str) -> Path:
    path: Path | None = opts["json_out"]
    return path or Path.cwd() / f"bench-{name}.json"


@click.group()
def bench() -> None:
    """Benchmarks against a real server process on loopback; each prints a table and writes JSON."""
