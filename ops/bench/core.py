"""Issue 2's benchmarks of the core service: `sqlfleet bench fleet|hot|cold`.

- fleet: create N tenants (admin API), give each a small `kv` table (batch API), mint a token
  each, then query every tenant once per round, in a shuffled order per round.
- hot: one tenant's point query (REST), the same query over Hrana over WebSocket (one stream per
  connection, an `execute` on it per round trip) and the bare `/v1/ping` route, in alternating
  time slices, so drift on a shared machine hits them alike.
- cold: requests that all miss the pool (round-robin over more tenants than the pool holds).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

import click

from ops.bench.driver import QUERY_SQL, Driver, latency_ms, summary
from ops.bench.errors import BenchError
from ops.bench.floor import fleet_floor
from ops.bench.loadgen import Drive, PhaseResult
from ops.bench.options import common_options, count, seconds, serve_overrides, session
from ops.bench.report import Row, emit, json_out
from ops.bench.server import BenchServer, pool_delta
from ops.bench.wsload import execute_messages, ws_drive
from ops.process import scratch_dir
from ops.settings import Settings

GIB = 1 << 30
ROWS = 10  # rows of each fleet tenant's `kv` table
# issue 14's targets
TARGETS = {
    "fleet_rss_bytes": int(0.5 * GIB),
    "fleet_req_per_s": 2000.0,
    "hot_ratio": 0.75,
    "cold_p99_ms": 1.5,
    "create_per_s": 2000.0,
    "setup_per_s": 100_000 / 120,  # a 100k-tenant fleet (create + table + token) in <= 120 s
}


@dataclass(frozen=True)
class Load:
    """The work of a fleet-wide benchmark: how many tenants, how many rounds over them, and how
    many requests in flight while measuring and while setting the tenants up."""

    tenants: int
    rounds: int
    concurrency: int
    setup_concurrency: int


def fleet_ids(count: int) -> list[str]:
    return [f"t{i:07d}" for i in range(count)]


def bench_fleet(
    server: BenchServer, driver: Driver, load: Load, reuse: bool = False, rows: int = ROWS
) -> dict[str, Any]:
    ids = fleet_ids(load.tenants)
    setup_cpu, started = server.cpu_seconds(), time.monotonic()
    tokens, setup = driver.setup(ids, rows, load.setup_concurrency, reuse)
    setup_seconds, setup_cpu = time.monotonic() - started, server.cpu_seconds() - setup_cpu
    requests = driver.query_requests(ids, tokens, rows)
    before, cpu0 = server.metrics(), server.cpu_seconds()
    per_round, results = [], []
    with driver.measuring():
        for r in range(load.rounds):
            order = list(range(load.tenants))
            random.Random(r).shuffle(order)
            result = driver.run(f"round{r}", requests, load.tenants, load.concurrency, order=order)
            results.append(result)
            per_round.append(
                {
                    "req_per_s": round(result.rate, 1),
                    "errors": result.errors,
                    "latency_ms": latency_ms(result.latencies),
                }
            )
            click.echo(f"round {r + 1}/{load.rounds}: {result.rate:,.0f} req/s", err=True)
            if result.timed_out:
                break
    cpu = server.cpu_seconds() - cpu0
    after = server.metrics()
    return {
        "bench": "fleet",
        "tenants": load.tenants,
        "rounds": len(results),
        "concurrency": load.concurrency,
        "pool_capacity": int(after.get("sqlfleet_pool_capacity", 0)),
        "setup": setup,
        "setup_seconds": round(setup_seconds, 3),
        "setup_per_s": round(load.tenants / setup_seconds, 1) if setup_seconds else 0.0,
        "setup_server_cpu_us_per_tenant": round(setup_cpu / load.tenants * 1e6, 1),
        **summary(results, cpu),
        "pool": pool_delta(before, after),
        "server_peak_rss_bytes": server.high_water(),
        "server_peak_rss_sampled_bytes": server.peak_rss,
        "per_round": per_round,
        "complete": not any(r.timed_out for r in results),
    }


def bench_hot(
    server: BenchServer,
    driver: Driver,
    concurrency: int,
    slices: int,
    slice_seconds: float,
    rows: int = 1000,
) -> dict[str, Any]:
    tokens, _ = driver.setup(["hot"], rows, 1)
    queries = [
        driver.request("POST", "/v1/tenants/hot/query", {"sql": QUERY_SQL, "params": [k]}, tokens[0])
        for k in range(1, rows + 1)
    ]
    order = list(range(rows))
    random.Random(0).shuffle(order)
    body = {"sql": QUERY_SQL, "params": [rows]}  # a body like the query's, read but not parsed
    pings = [driver.request("POST", "/v1/ping", body, tokens[0])]
    ws = execute_messages(QUERY_SQL, [[k] for k in range(1, rows + 1)])
    kinds: dict[str, tuple[list[bytes], list[int] | None, Drive | None]] = {
        "query": (queries, order, None),
        "ping": (pings, None, None),
        "ws": (ws, order, ws_drive(tokens[0])),
    }
    bound = 10_000_000  # a count bound; the slice's time ends it
    for kind, (requests, kind_order, drive) in kinds.items():  # warm-up, not counted
        driver.run(
            f"warm-{kind}", requests, bound, concurrency, kind_order, min(1.0, slice_seconds), drive=drive
        )
    names = list(kinds)
    results: dict[str, list[PhaseResult]] = {kind: [] for kind in names}
    cpu: dict[str, float] = dict.fromkeys(names, 0.0)
    with driver.measuring():
        for i in range(slices):
            # q p w w p q q p w ...: drift hits every kind alike
            cycle, at = divmod(i, len(names))
            kind = names[at if cycle % 2 == 0 else len(names) - 1 - at]
            requests, kind_order, drive = kinds[kind]
            cpu0 = server.cpu_seconds()
            results[kind].append(
                driver.run(f"{kind}{i}", requests, bound, concurrency, kind_order, slice_seconds, drive=drive)
            )
            cpu[kind] += server.cpu_seconds() - cpu0
    out: dict[str, Any] = {"bench": "hot", "concurrency": concurrency, "slices": slices}
    for kind, done in results.items():
        out[kind] = summary(done, cpu[kind])
    ping_rate = out["ping"]["req_per_s"]
    out["ratio"] = round(out["query"]["req_per_s"] / ping_rate, 3) if ping_rate else 0.0
    out["ws_ratio"] = round(out["ws"]["req_per_s"] / ping_rate, 3) if ping_rate else 0.0
    out["server_peak_rss_bytes"] = server.high_water()
    return out


def bench_cold(server: BenchServer, driver: Driver, load: Load, pool_capacity: int) -> dict[str, Any]:
    tenants, concurrency = load.tenants, load.concurrency
    if tenants <= pool_capacity + concurrency:
        raise BenchError("cold needs more tenants than pool capacity + concurrency, or requests would hit")
    ids = [f"c{i:07d}" for i in range(tenants)]
    tokens, setup = driver.setup(ids, 10, load.setup_concurrency)
    requests = driver.query_requests(ids, tokens, 10)
    # One unmeasured round: verifies every token once (the server caches them) and warms the OS page
    # cache, so what remains is the pool miss itself. Round-robin order defeats the LRU every time.
    driver.run("warm", requests, tenants, concurrency)
    before, cpu0 = server.metrics(), server.cpu_seconds()
    with driver.measuring():
        result = driver.run("cold", requests, tenants * load.rounds, concurrency)
    cpu = server.cpu_seconds() - cpu0
    pool = pool_delta(before, server.metrics())
    measured = pool["hits"] + pool["misses"]
    return {
        "bench": "cold",
        "tenants": tenants,
        "rounds": load.rounds,
        "concurrency": concurrency,
        "pool_capacity": pool_capacity,
        "setup": setup,
        **summary([result], cpu),
        "pool": pool,
        "miss_rate": round(pool["misses"] / measured, 4) if measured else 0.0,
        "server_peak_rss_bytes": server.high_water(),
    }


def _cpu(r: dict[str, Any]) -> str:
    us = r["server_cpu_us_per_request"]
    return f"{us} us ({r['server_cores']} cores), client {r['client_cores']} cores"


def fleet_rows(r: dict[str, Any]) -> list[Row]:
    rss, rate = r["server_peak_rss_bytes"], r["req_per_s"]
    setup = ", ".join(f"{k} {v['per_s']:,.0f}/s" for k, v in r["setup"].items())
    create, whole = r["setup"]["create"]["per_s"], r["setup_per_s"]
    return [
        ("tenants", f"{r['tenants']:,}", "", None),
        ("setup rate", setup, "", None),
        (
            "tenant create",
            f"{create:,.0f}/s",
            f">= {TARGETS['create_per_s']:,.0f}/s",
            create >= TARGETS["create_per_s"],
        ),
        (
            "whole setup (create + table + token)",
            f"{r['setup_seconds']:,.0f} s, {whole:,.0f} tenants/s, "
            f"{r['setup_server_cpu_us_per_tenant']:,.0f} us server CPU / tenant",
            f">= {TARGETS['setup_per_s']:,.0f}/s (100k in 120 s)",
            whole >= TARGETS["setup_per_s"],
        ),
        ("requests (errors)", f"{r['requests']:,} ({r['errors']:,})", "0 errors", r["errors"] == 0),
        (
            "throughput",
            f"{rate:,.0f} req/s",
            f">= {TARGETS['fleet_req_per_s']:,.0f}",
            rate >= TARGETS["fleet_req_per_s"],
        ),
        ("latency p50 / p99", f"{r['latency_ms']['p50']} / {r['latency_ms']['p99']} ms", "", None),
        ("pool hit rate", f"{r['pool']['hit_rate']:.1%}", "", None),
        ("pool open (mean)", f"{r['pool']['open_ms_mean']} ms", "", None),
        ("CPU / request: server, client", _cpu(r), "", None),
        (
            "server peak RSS",
            f"{rss / GIB:.3f} GiB",
            f"<= {TARGETS['fleet_rss_bytes'] / GIB:.1f} GiB",
            rss <= TARGETS["fleet_rss_bytes"],
        ),
        *_floor_rows(r),
    ]


def _floor_rows(r: dict[str, Any]) -> list[Row]:
    """The floor's steps (ops.bench.floor), each with the server's same step as a share of it."""
    floor = r.get("floor")
    if floor is None:
        return []
    ours = {
        "create": r["setup"]["create"]["per_s"],
        "setup": r["setup"]["schema"]["per_s"],
        "query": r["req_per_s"],
    }
    what = {"create": "durable file", "setup": "first write", "query": "open + query + close"}
    return [
        (
            f"floor: {step} ({what[step]}, bare)",
            f"{f['per_s']:,.0f}/s, {f['cpu_us_per_op']:,.0f} us CPU; server at "
            f"{ours[step] / f['per_s']:.0%} of it",
            "",
            None,
        )
        for step, f in floor.items()
    ]


def hot_rows(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for kind in ("query", "ws", "ping"):
        k = r[kind]
        rows += [
            (f"{kind} throughput", f"{k['req_per_s']:,.0f} req/s ({k['errors']} errors)", "", None),
            (f"{kind} p50 / p99", f"{k['latency_ms']['p50']} / {k['latency_ms']['p99']} ms", "", None),
            (f"{kind} CPU / request: server, client", _cpu(k), "", None),
        ]
    rows.append(
        (
            "query / ping",
            f"{r['ratio']:.3f}",
            f">= {TARGETS['hot_ratio']}",
            r["ratio"] >= TARGETS["hot_ratio"],
        )
    )
    rows.append(("ws query / ping", f"{r['ws_ratio']:.3f}", "", None))
    return rows


def cold_rows(r: dict[str, Any]) -> list[Row]:
    p99 = r["latency_ms"]["p99"]
    return [
        ("tenants / pool capacity", f"{r['tenants']:,} / {r['pool_capacity']:,}", "", None),
        ("requests (errors)", f"{r['requests']:,} ({r['errors']:,})", "0 errors", r["errors"] == 0),
        ("pool miss rate", f"{r['miss_rate']:.1%}", "100%", r["miss_rate"] >= 0.99),
        ("latency p50", f"{r['latency_ms']['p50']} ms", "", None),
        ("latency p99", f"{p99} ms", f"<= {TARGETS['cold_p99_ms']} ms", p99 <= TARGETS["cold_p99_ms"]),
        ("pool open (mean)", f"{r['pool']['open_ms_mean']} ms", "", None),
        ("throughput", f"{r['req_per_s']:,.0f} req/s", "", None),
        ("CPU / request: server, client", _cpu(r), "", None),
    ]


@click.command()
@count("--tenants", 100_000)
@count("--rounds", 3, "Queries per tenant.")
@count("--concurrency", 64)
@count("--setup-concurrency", 64)
@count("--pool-capacity", None, "[default: the server's]")
@click.option(
    "--reuse",
    is_flag=True,
    help="With --data-dir: keep the tenants an earlier run created there (creating 100k takes long: "
    "build the fleet once, rerun with --reuse); their table set-up is re-applied, idempotently.",
)
@click.option(
    "--floor/--no-floor",
    default=True,
    show_default=True,
    help="Then create, set up and query as many tenants with bare Python and APSW, same concurrency "
    "(ops.bench.floor): what the file system and SQLite allow here.",
)
@common_options(default_timeout=3600.0)
def fleet(
    tenants: int,
    rounds: int,
    concurrency: int,
    setup_concurrency: int,
    pool_capacity: int | None,
    reuse: bool,
    floor: bool,
    **opts: Any,
) -> None:
    """Create N tenants, then query every one once per round (shuffled) from concurrent clients."""
    if reuse and opts["data_dir"] is None:
        raise click.UsageError("--reuse needs --data-dir")
    with session(opts, pool_capacity) as (server, driver):
        result = bench_fleet(server, driver, Load(tenants, rounds, concurrency, setup_concurrency), reuse)
    result["server_exit_code"] = server.proc.returncode
    if floor:  # the server has stopped: the machine is as quiet as it was for the server
        click.echo("floor: the same work with bare Python and APSW...", err=True)
        settings = Settings.load({}, **serve_overrides(opts["serve_arg"]))
        with scratch_dir("sqlfleet-bench-floor-") as root:
            load = (setup_concurrency, concurrency)
            result["floor"] = fleet_floor(root, fleet_ids(tenants), ROWS, settings, load)
    emit(result, fleet_rows(result), json_out(opts, "fleet"))


@click.command()
@count("--concurrency", 32)
@count("--slices", 12, "Alternating query/ws/ping time slices.", minimum=3)
@seconds("--slice-seconds", 2.0)
@common_options(default_timeout=600.0)
def hot(concurrency: int, slices: int, slice_seconds: float, **opts: Any) -> None:
    """One tenant's point query (REST and WebSocket) vs the bare /v1/ping route, interleaved."""
    with session(opts, None) as (server, driver):
        result = bench_hot(server, driver, concurrency, slices, slice_seconds)
    result["server_exit_code"] = server.proc.returncode
    emit(result, hot_rows(result), json_out(opts, "hot"))


@click.command()
@count("--tenants", 2000, minimum=2)
@count("--rounds", 2, "Measured rounds.")
@count("--concurrency", 1)
@count("--setup-concurrency", 64)
@count("--pool-capacity", 64)
@common_options(default_timeout=600.0)
def cold(
    tenants: int, rounds: int, concurrency: int, setup_concurrency: int, pool_capacity: int, **opts: Any
) -> None:
    """Latency of requests that all miss the pool (round-robin over more tenants than it holds)."""
    with session(opts, pool_capacity) as (server, driver):
        load = Load(tenants, rounds, concurrency, setup_concurrency)
        result = bench_cold(server, driver, load, pool_capacity)
    result["server_exit_code"] = server.proc.returncode
    emit(result, cold_rows(result), json_out(opts, "cold"))
