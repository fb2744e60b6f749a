"""`sqlfleet bench backups`: issue 3's benchmark, against real `sqlfleet serve` processes shipping
to a real S3-compatible server (moto, started here on loopback; needs the `moto[server]` extra).

- lag: sustained writes spread over N tenants for each N in --sizes. The lag of every commit
  comes from the server's `sqlfleet_backup_lag_seconds` histogram (stamped by the wal_hook at
  commit, observed once its segment PUT and catalog update are done), as deltas around the
  phase; percentiles are interpolated inside buckets, and the p99 target is read exactly off the
  1.5 s bucket edge. A probe cross-checks it from outside: it commits on a tenant of its own and
  polls the bucket until a segment holds that commit. PUTs/s is the
  `sqlfleet_backup_segments_uploaded_total` delta over the phase; the phase's segments are read
  back from the bucket to count the dirty tenants each carried.
- burst: one server cannot commit to 10,000 tenants within a 1 s flush, so to see what one flush
  with N dirty tenants costs, the server is restarted with a flush interval of an hour, one commit
  goes to each of N tenants, and a verify (which flushes first) ships them: PUTs and seconds.
- throughput: the same writes against a server with shipping and one with `--backups false`, in
  alternating time slices (drift hits both alike), each after the shipper drained the last one.
- restore: a tenant of --restore-mb MB is snapshotted, then gets --restore-commits small commits
  and no new snapshot (the server restarts between the steps with other snapshot settings); then
  a timed restore of `latest` into a new tenant.
"""

from __future__ import annotations

import contextlib
import math
import random
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import httpx

from backups.segment import FRAMES
from ops.bench import BenchError, BenchServer, Driver, Row, emit, latency_ms, py_spy, running_server
from ops.bench_s3 import (
    LAG,
    SEGMENTS,
    MotoS3,
    Segments,
    aws_env,
    delta,
    lag_histogram,
    quantile,
    scrape,
    share_within,
)
from ops.loadgen import Phase, PhaseResult, run_phase
from tenants.errors import SqlfleetError

TARGETS = {"lag_p99_s": 1.5, "puts_flat": 2.0, "throughput_ratio": 0.85}
_CREATE = "CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT NOT NULL)"
_INSERT = "INSERT INTO kv(v) VALUES (?)"
_ROW = "v" * 100
_BLOBS = (
    "INSERT INTO blobs(b) WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
    "SELECT randomblob(?) FROM n"
)


# -- workload ----------------------------------------------------------------------------------------


def _phase(
    server: BenchServer, phase: Phase, clients: int, on_tick: Callable[[], None] | None = None
) -> PhaseResult:
    def tick() -> None:
        server.sample()
        if on_tick is not None:
            on_tick()

    return run_phase(server.url, phase, clients, on_tick=tick)


def _check(result: PhaseResult, want: int, step: str, server: BenchServer) -> None:
    if result.errors or result.sent < want:
        statuses = dict(result.statuses)
        raise BenchError(f"{step}: {result.ok} of {want} succeeded, {statuses}\n{server.log_tail(60)}")


def _http(server: BenchServer, timeout: float = 60) -> httpx.Client:
    headers = {"Authorization": f"Bearer {server.admin_key}"}
    return httpx.Client(base_url=server.url, headers=headers, timeout=timeout)


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


def settle(server: BenchServer, interval: float, wait: float = 300.0) -> None:
    """Wait until the shipper has nothing left: backlog 0 and no new lag observation for two
    flush intervals. Raises BenchError after `wait` seconds."""
    deadline = time.monotonic() + wait
    last = -1.0
    while time.monotonic() < deadline:
        m = scrape(server.url)
        count = m.get(f"{LAG}_count", 0.0)
        if m.get("sqlfleet_backup_backlog_bytes", 0.0) == 0 and count == last:
            return
        last = count
        time.sleep(2 * interval)
    raise BenchError(f"the shipper did not drain within {wait:g} s\n{server.log_tail()}")


# -- lag ---------------------------------------------------------------------------------------------


class LagProbe:
    """From outside: commit one row on `tenant`, then poll the bucket until a new segment holds
    a commit of that tenant at or after the moment the row was sent; lag = seen - sent (high by
    at most one poll and one request). Random pauses spread the probes over the flush cycle;
    a probe under way when `stop` is called still waits for its commit (at most 60 s). Its
    thread starts after the load generator forked (`start` is the phase's tick)."""

    def __init__(self, server: BenchServer, segments: Segments, tenant: str, poll: float = 0.02) -> None:
        self.server, self.segments, self.tenant, self.poll = server, segments, tenant, poll
        self.lags: list[float] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="lag-probe", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)

    def _run(self) -> None:
        rng = random.Random(7)
        seen = self.segments.last()
        with _http(self.server) as http:
            while not self._stop.is_set():
                try:
                    seen = self._probe(http, seen)
                except Exception as exc:  # reported with the results; the phase goes on
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                self._stop.wait(rng.uniform(0.1, 0.6))

    def _probe(self, http: httpx.Client, seen: str) -> str:
        sent = time.time()
        r = http.post(f"/v1/tenants/{self.tenant}/query", json={"sql": _INSERT, "params": ["probe"]})
        r.raise_for_status()
        while time.time() < sent + 60:
            for key, _ in self.segments.after(seen):
                seen = key
                if any(
                    c.tenant == self.tenant and c.kind == FRAMES and c.commits[-1][1] >= sent
                    for c in self.segments.chunks(key)
                ):
                    self.lags.append(time.time() - sent)
                    return seen
            time.sleep(self.poll)
        raise BenchError(f"the probe's commit of {sent:.3f} reached no segment within 60 s")


def measure_lag(
    server: BenchServer,
    driver: Driver,
    segments: Segments,
    ids: Sequence[str],
    seconds: float,
    concurrency: int,
    interval: float,
) -> dict[str, Any]:
    """Sustained writes over `ids` (shuffled) for `seconds`, then until the shipper drained."""
    order = list(range(len(ids)))
    random.Random(len(ids)).shuffle(order)
    bound = int(seconds * 20_000) + len(ids)  # a count far above the rate: time ends the phase
    phase = Phase(f"lag-{len(ids)}", writes(driver, ids), bound, concurrency, seconds, order)
    probe = LagProbe(server, segments, "probe")
    first, before, started, cpu0 = segments.last(), scrape(server.url), time.time(), server.cpu_seconds()
    try:
        result = _phase(server, phase, driver.clients, on_tick=probe.start)
    finally:
        probe.stop()
    ended, at_end, cpu = time.time(), scrape(server.url), server.cpu_seconds() - cpu0
    in_phase = [(k, s) for k, s in segments.after(first) if int(k.rsplit("/", 1)[1][:13]) <= ended * 1000]
    settle(server, interval)
    buckets = lag_histogram(before, scrape(server.url))
    puts = delta(before, at_end, SEGMENTS)
    hits, misses = (delta(before, at_end, f"sqlfleet_pool_{k}_total") for k in ("hits", "misses"))
    return {
        "tenants": len(ids),
        "writes": result.sent,
        "errors": result.errors,
        "writes_per_s": round(result.rate, 1),
        "write_latency_ms": latency_ms(result.latencies),
        "server_cores": round(cpu / result.elapsed, 2) if result.elapsed else 0.0,
        "pool_miss_rate": round(misses / (hits + misses), 3) if hits + misses else 0.0,
        "commits_observed": int(buckets[-1][1]) if buckets else 0,
        "lag_p50_s": round(quantile(buckets, 0.5), 3),
        "lag_p99_s": round(quantile(buckets, 0.99), 3),
        "lag_share_within_1_5_s": round(share_within(buckets, 1.5), 4),
        "lag_buckets": [[b if math.isfinite(b) else "+Inf", int(c)] for b, c in buckets],
        "probe": {"samples": len(probe.lags), "errors": probe.errors[:5], **_seconds(probe.lags)},
        "puts": int(puts),
        "puts_per_s": round(puts / (ended - started), 3),
        "flush_period_s": round((ended - started) / puts, 2) if puts else None,
        **segments.dirty(in_phase),
    }


def _seconds(values: Sequence[float]) -> dict[str, float]:
    ms = latency_ms(values)
    return {f"{k}_s": round(ms[k] / 1000, 3) for k in ("p50", "p99", "max")}


def measure_bursts(
    server: BenchServer,
    driver: Driver,
    segments: Segments,
    ids: Sequence[str],
    sizes: Sequence[int],
    concurrency: int,
) -> list[dict[str, Any]]:
    """On a server that never flushes by itself: one commit on each of N tenants, then one
    flush, for each N: the flush's PUTs, time and dirty tenants. A verify flushes before it
    restores; a second verify, with nothing to flush, gives the time to subtract."""
    out = []
    with _http(server, timeout=600) as http:

        def verify() -> float:
            started = time.perf_counter()
            r = http.post("/v1/admin/tenants/probe/backups/verify")
            if r.status_code != 200 or not r.json()["ok"]:
                raise BenchError(f"verify after the burst: {r.status_code} {r.text}\n{server.log_tail()}")
            return time.perf_counter() - started

        for n in sizes:
            _check(driver.run(f"burst-{n}", writes(driver, ids[:n]), n, concurrency), n, "burst", server)
            first, before = segments.last(), scrape(server.url)
            with_flush = verify()
            puts = delta(before, scrape(server.url), SEGMENTS)
            alone = verify()
            out.append(
                {
                    "dirty_tenants": n,
                    "puts": int(puts),
                    "flush_seconds": round(max(0.0, with_flush - alone), 3),
                    **segments.dirty(segments.after(first)),
                }
            )
    return out


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
    """Alternating slices of the same writes against both servers (on off off on on off ...)."""
    kinds = {"on": (on, writes(on, ids)), "off": (off, writes(off, ids))}
    order = list(range(len(ids)))
    random.Random(1).shuffle(order)
    bound = int(slice_seconds * 20_000) + len(ids)
    done: dict[str, list[PhaseResult]] = {"on": [], "off": []}
    cpu = {"on": 0.0, "off": 0.0}
    for kind, (driver, requests) in kinds.items():  # warm-up, not counted: every tenant open
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
        out[kind] = {
            "writes": sent,
            "errors": sum(r.errors for r in results),
            "writes_per_s": round(sent / seconds, 1) if seconds else 0.0,
            "latency_ms": latency_ms([x for r in results for x in r.latencies]),
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
    """Load `mb` MB, take one snapshot of it, make `commits` commits and no new snapshot (three
    server runs on one data dir with different snapshot settings), then time a restore."""
    base = [*serve_args, *s3.serve_args(f"restore-{secrets.token_hex(4)}")]
    never = ["--backup-snapshot-bytes", str(1 << 40), "--backup-snapshot-interval", "1e9"]
    tenant = "big"

    def query(driver: Driver, sql: str, params: list[Any] | None = None) -> bytes:
        return driver.request("POST", f"/v1/tenants/{tenant}/query", {"sql": sql, "params": params or []})

    with running_server(data_dir, [*base, *never]) as server:
        driver = Driver(server, clients, deadline)
        setup_tenants(driver, [tenant], 1)
        _check(driver.run("blobs", [query(driver, "CREATE TABLE blobs (b BLOB)")], 1, 1), 1, "blobs", server)
        load = query(driver, _BLOBS, [256, 4000])  # ~1 MB a statement
        _check(driver.run("load", [load], mb, 1), mb, "load", server)
    with running_server(data_dir, [*base, "--backup-snapshot-interval", "0.05"]) as server:
        snapshot = _snapshot_now(server, tenant)
    with running_server(data_dir, [*base, *never]) as server:
        driver = Driver(server, clients, deadline)
        _check(
            driver.run("commits", [query(driver, _INSERT, [_ROW])], commits, 4), commits, "commits", server
        )
        with _http(server, timeout=600) as http:
            size = http.get(f"/v1/admin/tenants/{tenant}").json()["size"]
            before, started = scrape(server.url), time.perf_counter()
            r = http.post(
                f"/v1/admin/tenants/{tenant}/restore", json={"timestamp": "latest", "as": "restored"}
            )
            seconds = time.perf_counter() - started
            if r.status_code != 200:
                raise BenchError(f"restore failed: {r.status_code} {r.text}\n{server.log_tail()}")
            server_seconds = delta(before, scrape(server.url), "sqlfleet_restore_duration_seconds_sum")
            count = {"sql": "SELECT count(*) FROM kv"}
            rows = [
                http.post(f"/v1/tenants/{t}/query", json=count).json()["rows"][0][0]
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


def _snapshot_now(server: BenchServer, tenant: str, wait: float = 300.0) -> dict[str, Any]:
    """Commit once and wait for the snapshot that follows (the server's snapshot interval is short)."""
    with _http(server) as http:
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
        n, share, probe = f"{p['tenants']:,} tenants", p["lag_share_within_1_5_s"], p["probe"]
        out += [
            (f"{n}: writes/s (errors)", f"{p['writes_per_s']:,.0f} ({p['errors']})", "", None),
            (
                f"{n}: lag p50 / p99",
                f"{p['lag_p50_s']} / {p['lag_p99_s']} s ({share:.2%} <= 1.5 s)",
                f"p99 <= {TARGETS['lag_p99_s']} s",
                share >= 0.99,
            ),
            (
                f"{n}: probe lag p50 / max ({probe['samples']})",
                f"{probe['p50_s']} / {probe['max_s']} s",
                "",
                None,
            ),
            (
                f"{n}: PUTs/s (flush period; dirty tenants per PUT)",
                f"{p['puts_per_s']} ({p['flush_period_s']} s; {p['dirty_tenants_per_segment_mean']} "
                f"mean, {p['dirty_tenants_per_segment_max']} max)",
                "",
                None,
            ),
        ]
    rates = [p["puts_per_s"] for p in r["lag"]]
    out.append(
        (
            "PUTs/s max / min over sizes",
            f"{r['puts_spread']:.2f} ({min(rates)} .. {max(rates)})",
            f"<= {TARGETS['puts_flat']}",
            r["puts_spread"] <= TARGETS["puts_flat"],
        )
    )
    for b in r.get("bursts", []):
        out.append(
            (
                f"one flush, {b['dirty_tenants']:,} dirty tenants",
                f"{b['puts']} PUTs, {b['flush_seconds']} s, "
                f"{b['segment_bytes_mean'] * b['segments'] / 1e6:.1f} MB",
                "",
                None,
            )
        )
    if r.get("bursts"):
        puts = [b["puts"] for b in r["bursts"]]
        flat = max(puts) / max(min(puts), 1)
        out.append(
            (
                "PUTs per flush max / min",
                f"{flat:.2f}",
                f"<= {TARGETS['puts_flat']}",
                flat <= TARGETS["puts_flat"],
            )
        )
    if "throughput" in r:
        t = r["throughput"]
        on, off = t["on"], t["off"]
        out += [
            (
                "writes/s with / without shipping",
                f"{on['writes_per_s']:,.0f} / {off['writes_per_s']:,.0f}",
                "",
                None,
            ),
            (
                "server CPU per write: with / without",
                f"{on['server_cpu_us_per_write']} / {off['server_cpu_us_per_write']} us",
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
                "restore: database / snapshot (compressed)",
                f"{x['db_bytes'] / 1e6:.1f} / {x['snapshot_bytes'] / 1e6:.1f} MB",
                "",
                None,
            ),
            ("restore: commits applied after the snapshot", f"{x['commits_applied']:,}", "", None),
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
    help="Tenant counts the writes are spread over: one lag phase and one burst each.",
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
    "--bursts/--no-bursts",
    default=True,
    show_default=True,
    help="Also measure one flush with N dirty tenants for each size.",
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
@click.option("--pool-capacity", type=click.IntRange(1), default=None, help="The servers' --pool-capacity.")
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
    """WAL shipping to S3 (moto): commit-to-replica lag and PUTs/s at each size, one flush with N
    dirty tenants, write throughput with shipping on vs off, restore time of a large tenant."""
    work = Path(tempfile.mkdtemp(prefix="sqlfleet-bench-backups-"))
    try:
        result = run(opts, work)
    except SqlfleetError as exc:
        raise click.ClickException(exc.message) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    emit(result, rows(result), opts["json_out"] or Path.cwd() / "bench-backups.json")


def run(opts: dict[str, Any], work: Path) -> dict[str, Any]:
    """Every measurement in turn. Raises BenchError (or LoadgenError) when one cannot be made."""
    deadline, interval = time.monotonic() + opts["timeout"], opts["flush_interval"]
    common = ["--backup-flush-interval", str(interval)]
    common += ["--pool-capacity", str(opts["pool_capacity"])] if opts["pool_capacity"] else []
    for item in opts["serve_arg"]:
        name, _, value = item.partition("=")
        common += [f"--{name.lstrip('-')}", value]
    result: dict[str, Any] = {"bench": "backups", "flush_interval": interval}
    s3 = MotoS3(work / "moto.log")
    try:
        s3.wait_ready()
        prefix = f"fleet-{secrets.token_hex(4)}"
        segments, fleet = Segments(s3.client(), prefix), [*common, *s3.serve_args(prefix)]
        ids = [f"b{i:05d}" for i in range(max(opts["sizes"]))]
        with aws_env():
            with running_server(work / "fleet", fleet) as on:
                driver = Driver(on, opts["clients"], deadline)
                result["setup"] = setup_tenants(driver, [*ids, "probe"], opts["setup_concurrency"])
                settle(on, interval)
                profile = (
                    py_spy(on.proc.pid, opts["py_spy_out"])
                    if opts["py_spy_out"]
                    else contextlib.nullcontext()
                )
                with profile:
                    result["lag"] = [
                        measure_lag(
                            on, driver, segments, ids[:n], opts["seconds"], opts["concurrency"], interval
                        )
                        for n in opts["sizes"]
                    ]
                rates = [p["puts_per_s"] for p in result["lag"]]
                result["puts_spread"] = round(max(rates) / min(rates), 3) if min(rates) > 0 else math.inf
                if opts["ratio_slices"]:
                    with running_server(None, [*common, "--backups", "false"]) as off:
                        off_driver = Driver(off, opts["clients"], deadline)
                        ratio_ids = ids[: opts["ratio_tenants"]]
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
            if opts["bursts"]:
                with running_server(work / "fleet", [*fleet, "--backup-flush-interval", "3600"]) as on:
                    driver = Driver(on, opts["clients"], deadline)
                    result["bursts"] = measure_bursts(
                        on, driver, segments, ids, opts["sizes"], opts["concurrency"]
                    )
            if opts["restore_mb"]:
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
