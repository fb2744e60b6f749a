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

The measurements live in `ops.bench.shipping` (lag, bursts), `ops.bench.overhead` (throughput)
and `ops.bench.restore`; this module runs them in turn and reports.
"""

from __future__ import annotations

import math
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from ops.bench import anchor
from ops.bench.driver import Driver
from ops.bench.options import (
    count,
    json_out_option,
    seconds,
    serve_arg_option,
    serve_args,
    timeout_option,
)
from ops.bench.overhead import measure_ratio
from ops.bench.profile import profile_options, profiling
from ops.bench.report import Row, emit
from ops.bench.restore import measure_restore
from ops.bench.s3 import BUCKET, Segments
from ops.bench.server import running_server
from ops.bench.shipping import measure_bursts, measure_lag, settle, setup_tenants
from ops.moto_s3 import MotoServer
from ops.process import signals_deferred
from tenants.errors import SqlfleetError

TARGETS = {"lag_p99_s": 1.5, "puts_flat": 2.0, "throughput_ratio": 0.85}


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
@seconds("--seconds", 10.0, "Length of each lag phase.")
@count("--concurrency", 16)
@count("--setup-concurrency", 32)
@seconds("--flush-interval", 1.0, "The servers' --backup-flush-interval.", minimum=0.01)
@click.option(
    "--bursts/--no-bursts",
    default=True,
    show_default=True,
    help="Also measure one flush with N dirty tenants for each size.",
)
@count("--ratio-tenants", 100, "Tenants of the with/without shipping comparison.")
@count("--ratio-slices", 6, "Alternating with/without slices (0: skip the comparison).", minimum=0)
@seconds("--slice-seconds", 5.0)
@count("--restore-mb", 50, "Size of the restored tenant (0: skip the restore).", minimum=0)
@count("--restore-commits", 10_000, "Commits made after its snapshot.")
@click.option(
    "--against",
    type=click.Choice(["litestream"]),
    default=None,
    help="Instead: sqlfleet and Litestream 0.5 side by side on one S3 server, same load, at each "
    "of --sizes (default then 10,100,1000,10000); needs `pip install 'sqlfleet[bench]'`.",
)
@seconds("--rate", 200.0, "With --against: commits per second, spread over the N databases.", minimum=1.0)
@count("--clients", 1, "Load generator processes.", maximum=16)
@count("--pool-capacity", None, "The servers' --pool-capacity.")
@serve_arg_option("Any other `sqlfleet serve` flag for every server, e.g. synchronous=NORMAL.")
@profile_options("Record the shipping server with py-spy during the lag phases.")
@json_out_option("backups")
@timeout_option(3600.0)
@click.pass_context
def bench_backups(ctx: click.Context, /, **opts: Any) -> None:
    """WAL shipping to S3 (moto): commit-to-replica lag and PUTs/s at each size, one flush with N
    dirty tenants, write throughput with shipping on vs off, restore time of a large tenant.
    With --against litestream: the same load against Litestream 0.5, side by side."""
    if opts["against"] and ctx.get_parameter_source("sizes") == click.core.ParameterSource.DEFAULT:
        opts["sizes"] = [10, 100, 1000, 10_000]
    work = Path(tempfile.mkdtemp(prefix="sqlfleet-bench-backups-"))
    try:
        result = run_against(opts, work) if opts["against"] else run(opts, work)
    except SqlfleetError as exc:
        raise click.ClickException(exc.message) from None
    finally:
        with signals_deferred():
            shutil.rmtree(work, ignore_errors=True)
    table = anchor.rows(result) if opts["against"] else rows(result)
    default = "bench-backups-litestream.json" if opts["against"] else "bench-backups.json"
    emit(result, table, opts["json_out"] or Path.cwd() / default)


def run_against(opts: dict[str, Any], work: Path) -> dict[str, Any]:
    """`--against litestream`: see ops.bench.anchor."""
    deadline = time.monotonic() + opts["timeout"]
    with MotoServer(work / "moto.log", buckets=(BUCKET,)) as s3:
        return anchor.compare(s3, work, opts, deadline)


def run(opts: dict[str, Any], work: Path) -> dict[str, Any]:
    """Every measurement in turn. Raises BenchError (or LoadgenError, LaunchError) when one
    cannot be made."""
    deadline, interval = time.monotonic() + opts["timeout"], opts["flush_interval"]
    common = [
        "--backup-flush-interval",
        str(interval),
        *serve_args(opts["pool_capacity"], None, opts["serve_arg"]),
    ]
    result: dict[str, Any] = {"bench": "backups", "flush_interval": interval}
    with MotoServer(work / "moto.log", buckets=(BUCKET,)) as s3:
        prefix = f"fleet-{secrets.token_hex(4)}"
        segments, shipping = (
            Segments(s3.client(max_attempts=3), BUCKET, prefix),
            s3.server_env(prefix, BUCKET),
        )
        ids = [f"b{i:05d}" for i in range(max(opts["sizes"]))]
        with running_server(work / "fleet", common, shipping) as on:
            driver = Driver(on, opts["clients"], deadline)
            result["setup"] = setup_tenants(driver, [*ids, "probe"], opts["setup_concurrency"])
            settle(on, interval)
            with profiling(on.proc.pid, opts["profile"], opts["profile_mode"]):
                result["lag"] = [
                    measure_lag(on, driver, segments, ids[:n], opts["seconds"], opts["concurrency"], interval)
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
            never = [*common, "--backup-flush-interval", "3600"]
            with running_server(work / "fleet", never, shipping) as on:
                driver = Driver(on, opts["clients"], deadline)
                result["bursts"] = measure_bursts(
                    on, driver, segments, ids, opts["sizes"], opts["concurrency"]
                )
        if opts["restore_mb"]:
            result["restore"] = measure_restore(
                s3.server_env(f"restore-{secrets.token_hex(4)}", BUCKET),
                work / "restore",
                common,
                opts["restore_mb"],
                opts["restore_commits"],
                opts["clients"],
                deadline,
            )
    return result
