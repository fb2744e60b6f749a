"""`sqlfleet bench backups`: issue 3's benchmark, against real `sqlfleet serve` processes shipping
to a real S3-compatible server (moto, started here on loopback; needs the `moto[server]` extra).

- lag: sustained writes spread over N tenants for each N in --sizes. Commit-to-replica lag comes
  from the server's `sqlfleet_backup_lag_seconds` histogram (every commit of the phase: stamped
  by the wal_hook at commit, observed once its segment PUT and catalog update are done), as
  deltas around the phase. Percentiles are interpolated inside buckets; the p99 target is read
  exactly off the 1.5 s bucket edge. A probe thread cross-checks it from outside: it commits on a
  tenant of its own and polls that tenant's `/backups` route until `latest` covers the commit.
  PUTs/s = `sqlfleet_backup_segments_uploaded_total` delta / phase time; the segments of the
  phase are read back from the bucket to count the dirty tenants each one carried.
- throughput: the same write workload against a server with shipping and one with
  `--backups false`, in alternating time slices (drift hits both alike); each slice starts after
  the shipper has drained the previous one.
- restore: a tenant of --restore-mb MB snapshotted, then --restore-commits small commits with no
  new snapshot (the server is restarted between the phases with other snapshot settings), then
  a timed restore of `latest` into a new tenant.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import httpx

from backups.replica import ReplicaClient
from backups.replica_factory import open_replica
from backups.segment import FRAMES, PREFIX_SIZE, index_length, parse_index
from ops.bench import BenchError, BenchServer, Driver, Row, emit, latency_ms, py_spy, running_server
from ops.loadgen import Phase, PhaseResult, run_phase
from tenants.errors import SqlfleetError

TARGETS = {"lag_p99_s": 1.5, "puts_flat": 2.0, "throughput_ratio": 0.85}
BUCKET, REGION = "sqlfleet-bench", "us-east-1"
_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "bench",  # moto takes any credentials
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_CONFIG_FILE": os.devnull,  # and these keep a developer's ~/.aws out of it
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}
_CREATE = "CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT NOT NULL)"
_INSERT = "INSERT INTO kv(v) VALUES (?)"
_ROW = "v" * 100
_BLOBS = (
    "INSERT INTO blobs(b) WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
    "SELECT randomblob(?) FROM n"
)
_LAG = "sqlfleet_backup_lag_seconds"
_SEGMENTS = "sqlfleet_backup_segments_uploaded_total"


# -- the S3 server ---------------------------------------------------------------------------------


class MotoS3:
    """`python -m moto.server` on a free loopback port, with one bucket; `close()` ends it."""

    def __init__(self, log_path: Path) -> None:
        if importlib.util.find_spec("moto") is None:
            raise BenchError("bench backups needs an S3 server: pip install 'moto[server]'")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port: int = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **_AWS_ENV}
            )
        self.log_path = log_path

    def wait_ready(self, wait: float = 30.0) -> None:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"moto exited with {self.proc.returncode}; log {self.log_path}")
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(self.url, timeout=1)
                break
            time.sleep(0.1)
        else:
            raise BenchError(f"moto did not answer in {wait:g} s; log {self.log_path}")
        httpx.put(f"{self.url}/{BUCKET}", timeout=10).raise_for_status()  # create the bucket

    def serve_args(self, prefix: str) -> list[str]:
        return [
            "--replica-url",
            f"s3://{BUCKET}/{prefix}",
            "--s3-endpoint-url",
            self.url,
            "--s3-region",
            REGION,
            "--s3-force-path-style",
            "true",
        ]

    def replica(self, prefix: str) -> ReplicaClient:
        import boto3

        session = boto3.session.Session(
            aws_access_key_id="bench", aws_secret_access_key="bench", region_name=REGION
        )
        return open_replica(
            f"s3://{BUCKET}/{prefix}",
            endpoint_url=self.url,
            region=REGION,
            force_path_style=True,
            session=session,
        )

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@contextlib.contextmanager
def _aws_env() -> Iterator[None]:
    """Dummy AWS credentials in this process's environment while server processes start
    (they inherit it; the standard AWS credential chain reads it there)."""
    saved = {k: os.environ.get(k) for k in _AWS_ENV}
    os.environ.update(_AWS_ENV)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# -- metrics ----------------------------------------------------------------------------------------


def scrape(url: str) -> dict[str, float]:
    """Every `sqlfleet_backup_*` / `sqlfleet_restore*` / pool sample of /metrics, by its full name."""
    samples = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(("sqlfleet_backup", "sqlfleet_restore", "sqlfleet_pool")):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def lag_histogram(before: dict[str, float], after: dict[str, float]) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of the lag histogram's buckets, as deltas."""
    buckets = []
    for name, value in after.items():
        if name.startswith(f'{_LAG}_bucket{{le="'):
            bound = name.split('le="')[1].rstrip('"}')
            buckets.append((math.inf if bound == "+Inf" else float(bound), value - before.get(name, 0.0)))
    return sorted(buckets)


def quantile(buckets: Sequence[tuple[float, float]], q: float) -> float:
    """Prometheus' histogram_quantile: linear inside the bucket holding rank q; the top finite
    bound if that is the +Inf bucket."""
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return 0.0
    rank, lower, below = q * total, 0.0, 0.0
    for bound, cumulative in buckets:
        if cumulative >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / max(cumulative - below, 1e-12)
        lower, below = bound, cumulative
    return lower


def share_within(buckets: Sequence[tuple[float, float]], bound: float) -> float:
    total = buckets[-1][1] if buckets else 0.0
    within = next((c for b, c in buckets if b == bound), None)
    if within is None:
        raise BenchError(f"the lag histogram has no {bound} s bucket edge")
    return within / total if total else 1.0


# -- workload ----------------------------------------------------------------------------------------


def _phase(
    server: BenchServer, phase: Phase, clients: int, on_tick: Callable[[], None] | None = None
) -> PhaseResult:
    def tick() -> None:
        server.sample()
        if on_tick is not None:
            on_tick()

    return run_phase(server.url, phase, clients, on_tick=tick)


def setup_tenants(driver: Driver, ids: Sequence[str], concurrency: int) -> dict[str, Any]:
    """Create `ids`, each with an empty `kv` table. Raises BenchError if any step fails."""
    plan = {
        "create": [driver.request("POST", "/v1/admin/tenants", {"id": t}) for t in ids],
        "schema": [driver.request("POST", f"/v1/tenants/{t}/query", {"sql": _CREATE}) for t in ids],
    }
    steps = {}
    for step, requests in plan.items():
        result = driver.run(step, requests, len(ids), concurrency)
        _check(result, len(ids), f"setup {step}", driver.server)
        steps[step] = {"seconds": round(result.elapsed, 2), "per_s": round(result.rate, 1)}
    return steps


def writes(driver: Driver, ids: Sequence[str]) -> list[bytes]:
    return [driver.request("POST", f"/v1/tenants/{t}/query", {"sql": _INSERT, "params": [_ROW]}) for t in ids]


def settle(server: BenchServer, interval: float, wait: float = 120.0) -> None:
    """Wait until the shipper has nothing left: backlog 0 and no new lag observation for two
    flush intervals. Raises BenchError after `wait` seconds."""
    deadline = time.monotonic() + wait
    last = -1.0
    while time.monotonic() < deadline:
        m = scrape(server.url)
        count = m.get(f"{_LAG}_count", 0.0)
        if m.get("sqlfleet_backup_backlog_bytes", 0.0) == 0 and count == last:
            return
        last = count
        time.sleep(2 * interval)
    raise BenchError(f"the shipper did not drain within {wait:g} s\n{server.log_tail()}")


# -- lag -----------------------------------------------------------------------------------------------


class LagProbe:
    """From outside the server: commit one row on `tenant`, then poll its `/backups` route until
    `latest` is at or after the moment the commit was sent; lag = seen - sent (an upper bound,
    by at most one poll interval and one request). Random pauses spread the probes over the
    flush cycle. Runs in a thread started after the load generator forked."""

    def __init__(self, server: BenchServer, tenant: str, poll: float = 0.02) -> None:
        self.server, self.tenant, self.poll = server, tenant, poll
        self.lags: list[float] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="lag-probe", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def _run(self) -> None:
        headers = {"Authorization": f"Bearer {self.server.admin_key}"}
        rng = random.Random(7)
        with httpx.Client(base_url=self.server.url, headers=headers, timeout=30) as http:
            while not self._stop.wait(rng.uniform(0.1, 0.6)):
                try:
                    self._probe(http)
                except (httpx.HTTPError, ValueError, KeyError):
                    self.errors += 1

    def _probe(self, http: httpx.Client) -> None:
        sent = time.time()
        http.post(
            f"/v1/tenants/{self.tenant}/query", json={"sql": _INSERT, "params": ["probe"]}
        ).raise_for_status()
        deadline = sent + 60
        while time.time() < deadline and not self._stop.is_set():
            info = http.get(f"/v1/admin/tenants/{self.tenant}/backups").json()
            if datetime.fromisoformat(info["latest"].replace("Z", "+00:00")).timestamp() >= sent:
                self.lags.append(time.time() - sent)
                return
            time.sleep(self.poll)


def segment_stats(replica: ReplicaClient, since: float, until: float) -> dict[str, Any]:
    """Segments uploaded in [since, until] (by the time in their key), and the tenants with new
    commits each one carried (read from their indexes)."""
    tenants, sizes = [], []
    for obj in replica.list("segments/"):
        created = int(obj.key.split("/")[-1].split("-")[0]) / 1000
        if not since <= created <= until:
            continue
        head = replica.get_range(obj.key, 0, 64 << 10)
        if len(head) < PREFIX_SIZE + index_length(head):
            head = replica.get_range(obj.key, 0, PREFIX_SIZE + index_length(head))
        _, refs = parse_index(head, obj.key)
        tenants.append(len({r.tenant for r in refs if r.kind == FRAMES}))
        sizes.append(obj.size)
    n = len(tenants)
    return {
        "segments": n,
        "dirty_tenants_per_segment_mean": round(sum(tenants) / n, 1) if n else 0.0,
        "dirty_tenants_per_segment_max": max(tenants, default=0),
        "segment_bytes_mean": round(sum(sizes) / n) if n else 0,
    }


def measure_lag(
    server: BenchServer,
    driver: Driver,
    replica: ReplicaClient,
    ids: Sequence[str],
    seconds: float,
    concurrency: int,
    interval: float,
) -> dict[str, Any]:
    """Sustained writes over `ids` for `seconds`, then until the shipper drained."""
    requests = writes(driver, ids)
    order = list(range(len(ids)))
    random.Random(len(ids)).shuffle(order)
    bound = int(seconds * 20_000) + len(ids)  # a count bound far above the rate; time ends the phase
    phase = Phase(f"lag-{len(ids)}", requests, bound, concurrency, seconds, order)
    probe = LagProbe(server, "probe")
    before, started = scrape(server.url), time.time()
    cpu0 = server.cpu_seconds()
    try:
        result = _phase(server, phase, driver.clients, on_tick=probe.start)
    finally:
        probe.stop()
    ended, at_end = time.time(), scrape(server.url)
    cpu = server.cpu_seconds() - cpu0
    settle(server, interval)
    buckets = lag_histogram(before, scrape(server.url))
    puts = at_end.get(_SEGMENTS, 0.0) - before.get(_SEGMENTS, 0.0)
    hits = at_end.get("sqlfleet_pool_hits_total", 0.0) - before.get("sqlfleet_pool_hits_total", 0.0)
    misses = at_end.get("sqlfleet_pool_misses_total", 0.0) - before.get("sqlfleet_pool_misses_total", 0.0)
    commits = buckets[-1][1] if buckets else 0.0
    return {
        "tenants": len(ids),
        "writes": result.sent,
        "errors": result.errors,
        "writes_per_s": round(result.rate, 1),
        "write_latency_ms": latency_ms(result.latencies),
        "server_cores": round(cpu / result.elapsed, 2) if result.elapsed else 0.0,
        "pool_miss_rate": round(misses / (hits + misses), 3) if hits + misses else 0.0,
        "commits_observed": int(commits),
        "lag_p50_s": round(quantile(buckets, 0.5), 3),
        "lag_p99_s": round(quantile(buckets, 0.99), 3),
        "lag_share_within_1_5_s": round(share_within(buckets, 1.5), 4),
        "lag_buckets": [[b if math.isfinite(b) else "+Inf", int(c)] for b, c in buckets],
        "probe": {"samples": len(probe.lags), "errors": probe.errors, **_seconds(probe.lags)},
        "puts": int(puts),
        "puts_per_s": round(puts / (ended - started), 3),
        **segment_stats(replica, started, ended),
    }


def _seconds(values: Sequence[float]) -> dict[str, float]:
    ms = latency_ms(values)
    return {
        "p50_s": round(ms["p50"] / 1000, 3),
        "p99_s": round(ms["p99"] / 1000, 3),
        "max_s": round(ms["max"] / 1000, 3),
    }


# -- throughput with and without shipping ----------------------------------------------------------


def measure_ratio(
    on: Driver,
    off: Driver,
    ids: Sequence[str],
    slices: int,
    slice_seconds: float,
    concurrency: int,
    interval: float,
) -> dict[str, Any]:
    """Alternating slices of the same writes against both servers (on, off, off, on, ...)."""
    kinds = {"on": (on, writes(on, ids)), "off": (off, writes(off, ids))}
    order = list(range(len(ids)))
    random.Random(1).shuffle(order)
    bound = int(slice_seconds * 20_000) + len(ids)
    done: dict[str, list[PhaseResult]] = {"on": [], "off": []}
    cpu = {"on": 0.0, "off": 0.0}
    for kind, (driver, requests) in kinds.items():  # warm-up: every tenant open, not counted
        _phase(
            driver.server, Phase(f"warm-{kind}", requests, len(ids), concurrency, slice_seconds), on.clients
        )
    settle(on.server, interval)
    for i in range(slices):
        kind = ("on", "off")[(i + i // 2) % 2]
        driver, requests = kinds[kind]
        cpu0 = driver.server.cpu_seconds()
        phase = Phase(f"{kind}{i}", requests, bound, concurrency, slice_seconds, order)
        done[kind].append(_phase(driver.server, phase, driver.clients))
        cpu[kind] += driver.server.cpu_seconds() - cpu0
        settle(on.server, interval)  # the shipper's tail must not run into the next slice
    out: dict[str, Any] = {"tenants": len(ids), "slices": slices, "slice_seconds": slice_seconds}
    for kind, results in done.items():
        sent, seconds = sum(r.sent for r in results), sum(r.elapsed for r in results)
        lat = [x for r in results for x in r.latencies]
        out[kind] = {
            "writes": sent,
            "errors": sum(r.errors for r in results),
            "writes_per_s": round(sent / seconds, 1) if seconds else 0.0,
            "latency_ms": latency_ms(lat),
            "server_cpu_us_per_write": round(cpu[kind] / sent * 1e6, 1) if sent else 0.0,
        }
    off_rate = out["off"]["writes_per_s"]
    out["ratio"] = round(out["on"]["writes_per_s"] / off_rate, 3) if off_rate else 0.0
    return out


# -- restore ------------------------------------------------------------------------------------------


def measure_restore(
    s3: MotoS3,
    data_dir: Path,
    serve_args: Sequence[str],
    mb: int,
    commits: int,
    clients: int,
    deadline: float,
) -> dict[str, Any]:
    """Load `mb` MB, make one snapshot of it, make `commits` commits with no new snapshot (three
    server runs on one data dir, with different snapshot settings), then time a restore."""
    base = [*serve_args, *s3.serve_args(f"restore-{secrets.token_hex(4)}")]
    never = ["--backup-snapshot-bytes", str(1 << 40), "--backup-snapshot-interval", "1e9"]
    tenant = "big"
    with running_server(data_dir, [*base, *never]) as server:
        driver = Driver(server, clients, deadline)
        setup_tenants(driver, [tenant], 1)
        blobs = {"sql": "CREATE TABLE blobs (b BLOB)"}
        driver.run("blobs", [driver.request("POST", f"/v1/tenants/{tenant}/query", blobs)], 1, 1)
        load = driver.request("POST", f"/v1/tenants/{tenant}/query", {"sql": _BLOBS, "params": [256, 4000]})
        loaded = driver.run("load", [load], mb, 1)  # 256 x 4000 B: ~1 MB a statement
        _check(loaded, mb, "load", server)
    with running_server(data_dir, [*base, "--backup-snapshot-interval", "0.05"]) as server:
        snapshot = _snapshot_now(server, tenant)
    with running_server(data_dir, [*base, *never]) as server:
        driver = Driver(server, clients, deadline)
        small = driver.request("POST", f"/v1/tenants/{tenant}/query", {"sql": _INSERT, "params": [_ROW]})
        wrote = driver.run("commits", [small], commits, 4)
        _check(wrote, commits, "commits", server)
        with httpx.Client(
            base_url=server.url, timeout=600, headers={"Authorization": f"Bearer {server.admin_key}"}
        ) as http:
            size = http.get(f"/v1/admin/tenants/{tenant}").json()["size"]
            before = scrape(server.url)
            started = time.perf_counter()
            r = http.post(
                f"/v1/admin/tenants/{tenant}/restore", json={"timestamp": "latest", "as": "restored"}
            )
            seconds = time.perf_counter() - started
            if r.status_code != 200:
                raise BenchError(f"restore failed: {r.status_code} {r.text}\n{server.log_tail()}")
            server_seconds = scrape(server.url).get(
                "sqlfleet_restore_duration_seconds_sum", 0.0
            ) - before.get("sqlfleet_restore_duration_seconds_sum", 0.0)
            count = "SELECT count(*) FROM kv"
            rows = [
                http.post(f"/v1/tenants/{t}/query", json={"sql": count}).json()["rows"][0][0]
                for t in (tenant, "restored")
            ]
    if rows[0] != rows[1]:
        raise BenchError(f"the restored tenant has {rows[1]} rows, the original {rows[0]}")
    return {
        "db_bytes": size,
        "snapshot_bytes": snapshot["bytes"],
        "commits_since_snapshot": commits,
        "commits_applied": r.json()["commits_applied"],
        "seconds": round(seconds, 3),
        "server_seconds": round(server_seconds, 3),
    }


def _check(result: PhaseResult, want: int, step: str, server: BenchServer) -> None:
    if result.errors or result.sent < want:
        raise BenchError(
            f"{step}: {result.ok} of {want} succeeded, {dict(result.statuses)}\n{server.log_tail()}"
        )


def _snapshot_now(server: BenchServer, tenant: str, wait: float = 300.0) -> dict[str, Any]:
    """Commit once and wait for the snapshot that follows (a short snapshot interval)."""
    headers = {"Authorization": f"Bearer {server.admin_key}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=60) as http:
        since = time.time()
        r = http.post(f"/v1/tenants/{tenant}/query", json={"sql": _INSERT, "params": [_ROW]})
        if r.status_code != 200:
            raise BenchError(f"commit before the snapshot: {r.status_code} {r.text}\n{server.log_tail(60)}")
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            for snap in http.get(f"/v1/admin/tenants/{tenant}/backups").json()["snapshots"]:
                if datetime.fromisoformat(snap["taken"].replace("Z", "+00:00")).timestamp() >= since:
                    return dict(snap)
            time.sleep(0.1)
    raise BenchError(f"no snapshot of {tenant} within {wait:g} s\n{server.log_tail()}")


# -- output and the command ------------------------------------------------------------------------


def rows(r: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    for p in r["lag"]:
        n = f"{p['tenants']:,} tenants"
        share = p["lag_share_within_1_5_s"]
        probe = p["probe"]
        out += [
            (f"{n}: writes/s (errors)", f"{p['writes_per_s']:,.0f} ({p['errors']})", "", None),
            (
                f"{n}: lag p50 / p99 (histogram)",
                f"{p['lag_p50_s']} / {p['lag_p99_s']} s, {share:.2%} <= 1.5 s",
                f"p99 <= {TARGETS['lag_p99_s']} s",
                share >= 0.99,
            ),
            (
                f"{n}: lag p50 / max (probe, {probe['samples']})",
                f"{probe['p50_s']} / {probe['max_s']} s",
                "",
                None,
            ),
            (
                f"{n}: PUTs/s (dirty tenants per PUT)",
                f"{p['puts_per_s']} ({p['dirty_tenants_per_segment_mean']} mean, "
                f"{p['dirty_tenants_per_segment_max']} max)",
                "",
                None,
            ),
        ]
    rates = [p["puts_per_s"] for p in r["lag"]]
    spread = r["puts_spread"]
    out.append(
        (
            "PUTs/s max / min over sizes",
            f"{spread:.2f} ({min(rates)} .. {max(rates)})",
            f"<= {TARGETS['puts_flat']}",
            spread <= TARGETS["puts_flat"],
        )
    )
    if "throughput" in r:
        t = r["throughput"]
        out += [
            (
                "writes/s with / without shipping",
                f"{t['on']['writes_per_s']:,.0f} / {t['off']['writes_per_s']:,.0f}",
                "",
                None,
            ),
            (
                "server CPU per write: with / without",
                f"{t['on']['server_cpu_us_per_write']} / {t['off']['server_cpu_us_per_write']} us",
                "",
                None,
            ),
            (
                "throughput ratio",
                f"{t['ratio']:.3f}",
                f">= {TARGETS['throughput_ratio']}",
                t["ratio"] >= TARGETS["throughput_ratio"],
            ),
        ]
    if "restore" in r:
        x = r["restore"]
        out += [
            (
                "restore: database, snapshot (compressed)",
                f"{x['db_bytes'] / 1e6:.1f} MB, {x['snapshot_bytes'] / 1e6:.1f} MB",
                "",
                None,
            ),
            ("restore: commits applied since snapshot", f"{x['commits_applied']:,}", "", None),
            ("restore time: client / server", f"{x['seconds']} / {x['server_seconds']} s", "", None),
        ]
    return out


def _sizes(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
    try:
        sizes = [int(s) for s in value.split(",") if s.strip()]
    except ValueError:
        raise click.BadParameter("a comma-separated list of tenant counts, e.g. 10,1000,10000") from None
    if not sizes or min(sizes) < 1:
        raise click.BadParameter("at least one size, each at least 1")
    return sizes


@click.command("backups")
@click.option(
    "--sizes",
    default="10,1000,10000",
    show_default=True,
    callback=_sizes,
    help="Tenant counts the writes are spread over, one lag phase each.",
)
@click.option(
    "--seconds", type=click.FloatRange(0.1), default=10.0, show_default=True, help="Length of each lag phase."
)
@click.option("--concurrency", type=click.IntRange(1), default=16, show_default=True)
@click.option("--setup-concurrency", type=click.IntRange(1), default=32, show_default=True)
@click.option(
    "--flush-interval",
    type=click.FloatRange(0.01),
    default=1.0,
    show_default=True,
    help="The servers' --backup-flush-interval.",
)
@click.option(
    "--ratio-tenants",
    type=click.IntRange(1),
    default=100,
    show_default=True,
    help="Tenants of the with/without shipping comparison.",
)
@click.option(
    "--ratio-slices",
    type=click.IntRange(0),
    default=6,
    show_default=True,
    help="Alternating with/without slices (0: skip the comparison).",
)
@click.option("--slice-seconds", type=click.FloatRange(0.1), default=5.0, show_default=True)
@click.option(
    "--restore-mb",
    type=click.IntRange(0),
    default=50,
    show_default=True,
    help="Size of the restored tenant (0: skip the restore).",
)
@click.option(
    "--restore-commits",
    type=click.IntRange(1),
    default=10_000,
    show_default=True,
    help="Commits made after its snapshot.",
)
@click.option(
    "--clients", type=click.IntRange(1, 16), default=1, show_default=True, help="Load generator processes."
)
@click.option("--pool-capacity", type=click.IntRange(1), default=None, help="Servers' --pool-capacity.")
@click.option(
    "--serve-arg",
    multiple=True,
    metavar="NAME=VALUE",
    help="Any other `sqlfleet serve` flag for every server, e.g. synchronous=NORMAL.",
)
@click.option(
    "--py-spy",
    "py_spy_out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Record the shipping server with py-spy during the lag phases (.svg, .json, or text).",
)
@click.option(
    "--json-out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to write the JSON result [default: bench-backups.json].",
)
@click.option(
    "--timeout", type=float, default=3600.0, show_default=True, help="Overall time budget, seconds."
)
def bench_backups(**opts: Any) -> None:
    """WAL shipping: commit-to-S3 lag and PUTs/s at each size, write throughput with shipping on
    vs off, restore time of a large tenant. Starts moto (S3) and the servers itself."""
    work = Path(tempfile.mkdtemp(prefix="sqlfleet-bench-backups-"))
    try:
        result = run(opts, work)
    except SqlfleetError as exc:
        raise click.ClickException(exc.message) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    emit(result, rows(result), opts["json_out"] or Path.cwd() / "bench-backups.json")


def run(opts: dict[str, Any], work: Path) -> dict[str, Any]:
    """Every measurement in order; raises BenchError (or LoadgenError) when one cannot be made."""
    deadline = time.monotonic() + opts["timeout"]
    interval = opts["flush_interval"]
    common = ["--backup-flush-interval", str(interval)]
    if opts["pool_capacity"]:
        common += ["--pool-capacity", str(opts["pool_capacity"])]
    for item in opts["serve_arg"]:
        name, _, value = item.partition("=")
        common += [f"--{name.lstrip('-')}", value]
    result: dict[str, Any] = {"bench": "backups", "flush_interval": interval, "lag": []}
    s3 = MotoS3(work / "moto.log")
    try:
        s3.wait_ready()
        prefix = f"lag-{secrets.token_hex(4)}"
        ids = [f"b{i:05d}" for i in range(max(opts["sizes"]))]
        with _aws_env(), running_server(None, [*common, *s3.serve_args(prefix)]) as on:
            driver = Driver(on, opts["clients"], deadline)
            result["setup"] = setup_tenants(driver, [*ids, "probe"], opts["setup_concurrency"])
            settle(on, interval)
            replica = s3.replica(prefix)
            profile = (
                py_spy(on.proc.pid, opts["py_spy_out"]) if opts["py_spy_out"] else contextlib.nullcontext()
            )
            with profile:
                for size in opts["sizes"]:
                    result["lag"].append(
                        measure_lag(
                            on, driver, replica, ids[:size], opts["seconds"], opts["concurrency"], interval
                        )
                    )
            replica.close()
            rates = [p["puts_per_s"] for p in result["lag"]]
            result["puts_spread"] = round(max(rates) / min(rates), 3) if min(rates) > 0 else math.inf
            if opts["ratio_slices"]:
                ratio_ids = ids[: opts["ratio_tenants"]] if len(ids) >= opts["ratio_tenants"] else ids
                with running_server(None, [*common, "--backups", "false"]) as off:
                    off_driver = Driver(off, opts["clients"], deadline)
                    setup_tenants(off_driver, ratio_ids, opts["setup_concurrency"])
                    result["throughput"] = measure_ratio(
                        driver,
                        off_driver,
                        ratio_ids,
                        opts["ratio_slices"],
                        opts["slice_seconds"],
                        opts["concurrency"],
                        interval,
                    )
            result["server_peak_rss_bytes"] = on.high_water()
        if opts["restore_mb"]:
            with _aws_env():
                result["restore"] = measure_restore(
                    s3,
                    work / "restore",
                    common,
                    opts["restore_mb"],
                    opts["restore_commits"],
                    opts["clients"],
                    deadline,
                )
    finally:
        s3.close()
    return result
