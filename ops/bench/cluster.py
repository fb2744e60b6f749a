"""`sqlfleet bench cluster` (issue 16): one node vs two nodes of a cluster on this machine, in one
run, on one etcd member and one shared replica directory.

1. n1 alone: set up N tenants; the hot workload (point queries over a few tenants, all in the
   pool) and the fleet workload (one query per tenant, shuffled, most of them pool misses).
2. n2 joins: the seconds until every slot is owned as assigned (the planned moves of half the
   slots), then one unmeasured pass so every moved tenant is restored on the new owner.
3. Both workloads again through n1's URL only (half the requests take the proxy hop), through
   both URLs (connections alternate), and routed to each tenant's owner (what a front hashing
   on the tenant gives). Throughput ratio against n1 alone, same run.
4. The proxy hop: one connection, a tenant n2 owns, through n1 vs to n2 directly: p50/p99.
5. `drain n2`: the seconds until n1 owns every slot, and how many tenants moved.
"""

from __future__ import annotations

import contextlib
import random
import secrets
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import click
import httpx

from cluster.slots import assignment, slot_of
from ops import keys
from ops.bench.driver import Driver, latency_ms, summary
from ops.bench.errors import BenchError
from ops.bench.loadgen import Drive, routed, spread
from ops.bench.options import common_options, count, seconds, serve_args
from ops.bench.report import Row, emit, json_out
from ops.bench.server import BenchServer, running_server
from ops.etcd_member import running_member
from ops.process import signals_deferred

TARGET_RATIO = 1.6  # two nodes' throughput over one node's (issue 16)
SETTLE_WAIT = 300.0  # seconds for a rebalance or a drain at most


class Cluster:
    """The nodes of the benchmark's cluster, started with the same flags and admin key."""

    def __init__(self, stack: contextlib.ExitStack, common: list[str], admin_key: str) -> None:
        self.stack, self.common, self.admin_key = stack, common, admin_key
        self.nodes: dict[str, BenchServer] = {}

    def start(self, name: str) -> BenchServer:
        server = self.stack.enter_context(
            running_server(None, [*self.common, "--node-id", name], admin_key=self.admin_key)
        )
        self.nodes[name] = server
        return server

    def status(self) -> dict[str, Any]:
        with httpx.Client(headers={"Authorization": f"Bearer {self.admin_key}"}, timeout=30) as http:
            body: dict[str, Any] = http.get(f"{self.nodes['n1'].url}/v1/admin/cluster").json()
        return body

    def settle(self, members: Sequence[str], what: str) -> float:
        """Seconds until every slot is owned as assigned among `members`. Raises BenchError."""
        started, expected = time.monotonic(), Counter(assignment(members).values())
        while {n: i["slots"] for n, i in self.status()["nodes"].items() if i["slots"]} != expected:
            if time.monotonic() - started > SETTLE_WAIT:
                raise BenchError(f"{what}: slots not settled within {SETTLE_WAIT:g} s: {self.status()}")
            time.sleep(0.05)
        return time.monotonic() - started

    def cpu_seconds(self) -> float:
        return sum(server.cpu_seconds() for server in self.nodes.values())


@contextlib.contextmanager
def running_cluster(opts: dict[str, Any], pool_capacity: int, extra: Sequence[str] = ()) -> Iterator[Cluster]:
    """etcd, a shared replica directory and signing key; nodes are started by the caller, with
    `extra` flags too."""
    work = Path(tempfile.mkdtemp(prefix="sqlfleet-bench-cluster-"))
    try:
        key = keys.signing_key_file(work)
        with running_member(work / "etcd", work / "etcd.log") as etcd, contextlib.ExitStack() as stack:
            flags = {"--cluster-etcd": etcd, "--replica-url": (work / "replica").as_uri()}
            common = [*(p for pair in flags.items() for p in pair), "--signing-key-file", str(key)]
            common += [*serve_args(pool_capacity, opts["worker_threads"], opts["serve_arg"]), *extra]
            yield Cluster(stack, common, "bench-" + secrets.token_urlsafe(16))
    finally:
        with signals_deferred():
            shutil.rmtree(work, ignore_errors=True)


def _phase(
    cluster: Cluster,
    driver: Driver,
    name: str,
    requests: list[bytes],
    seconds: float,
    concurrency: int,
    drive: Drive | None,
) -> dict[str, Any]:
    order = list(range(len(requests)))
    random.Random(name).shuffle(order)
    cpu0 = cluster.cpu_seconds()
    result = driver.run(name, requests, 10_000_000, concurrency, order, seconds, drive=drive)
    out = summary([result], cluster.cpu_seconds() - cpu0)
    if result.errors:
        out["statuses"] = {str(k): v for k, v in result.statuses.items()}
    return out


def bench_cluster(
    opts: dict[str, Any],
    tenants: int,
    hot_tenants: int,
    concurrency: int,
    phase_seconds: float,
    pool_capacity: int,
) -> dict[str, Any]:
    deadline = time.monotonic() + opts["timeout"]
    with running_cluster(opts, pool_capacity) as cluster:
        n1 = cluster.start("n1")
        cluster.settle(["n1"], "n1 alone")
        driver = Driver(n1, opts["clients"], deadline)
        ids = [f"c{i:06d}" for i in range(tenants)]
        tokens, setup = driver.setup(ids, 10, 64)
        fleet = driver.query_requests(ids, tokens, 10)
        hot = [r for _ in range(50) for r in fleet[:hot_tenants]]
        work = {"hot": hot, "fleet": fleet}
        result: dict[str, Any] = {
            "bench": "cluster",
            "tenants": tenants,
            "hot_tenants": hot_tenants,
            "setup": setup,
        }
        result["one_node"] = {
            k: _phase(cluster, driver, f"one-{k}", r, phase_seconds, concurrency, None)
            for k, r in work.items()
        }
        n2 = cluster.start("n2")
        result["join_settle_s"] = round(cluster.settle(["n1", "n2"], "n2 joining"), 2)
        owners = assignment(["n1", "n2"])
        moved = [t for t in ids if owners[slot_of(t)] == "n2"]
        started = time.monotonic()
        driver.run("first-access", fleet, len(fleet), concurrency)  # restores the moved tenants
        result["first_access_after_join_s"] = round(time.monotonic() - started, 2)
        result["moved_on_join"] = len(moved)
        urls = {"n1": n1.url, "n2": n2.url}
        route = {raw: urls[owners[slot_of(t)]] for raw, t in zip(fleet, ids, strict=True)}  # hot's too
        drives: dict[str, Drive | None] = {
            "via_n1": None,
            "via_both": spread(list(urls.values())),
            "routed": routed(route),
        }
        two: dict[str, Any] = {}
        for via, drive in drives.items():
            for kind, requests in work.items():
                two[f"{kind}_{via}"] = _phase(
                    cluster, driver, f"two-{kind}-{via}", requests, phase_seconds, concurrency, drive
                )
        result["two_nodes"] = two
        result["ratios"] = {
            key: round(r["req_per_s"] / result["one_node"][key.split("_")[0]]["req_per_s"], 3)
            for key, r in two.items()
        }
        result["proxy_hop"] = _hop(driver, fleet, ids, owners, urls)
        started = time.monotonic()
        with httpx.Client(headers={"Authorization": f"Bearer {cluster.admin_key}"}, timeout=30) as http:
            http.post(f"{n1.url}/v1/admin/cluster/nodes/n2/drain").raise_for_status()
        result["drain_s"] = round(cluster.settle(["n1"], "draining n2"), 2)
        result["drained_tenants"] = len(moved)
    return result


def _hop(
    driver: Driver, fleet: list[bytes], ids: list[str], owners: dict[int, str], urls: dict[str, str]
) -> dict[str, Any]:
    """One connection, sequential requests for tenants n2 owns: through n1 (one hop) vs to n2."""
    theirs = [raw for raw, t in zip(fleet, ids, strict=True) if owners[slot_of(t)] == "n2"][:8]
    if not theirs:
        raise BenchError("no tenant on n2")
    out: dict[str, Any] = {}
    for via, url in urls.items():
        drive = routed(dict.fromkeys(theirs, url))
        result = driver.run(f"hop-{via}", theirs, 2000, 1, None, 30.0, drive=drive)
        out[f"via_{via}_ms"] = latency_ms(result.latencies)
    out["added_p50_ms"] = round(out["via_n1_ms"]["p50"] - out["via_n2_ms"]["p50"], 3)
    out["added_p99_ms"] = round(out["via_n1_ms"]["p99"] - out["via_n2_ms"]["p99"], 3)
    return out


def cluster_rows(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = [("tenants (hot ones)", f"{r['tenants']:,} ({r['hot_tenants']})", "", None)]
    for kind in ("hot", "fleet"):
        one = r["one_node"][kind]["req_per_s"]
        rows.append((f"{kind}: one node", f"{one:,.0f} req/s", "", None))
        for via in ("via_n1", "via_both", "routed"):
            ratio = r["ratios"][f"{kind}_{via}"]
            rate = r["two_nodes"][f"{kind}_{via}"]["req_per_s"]
            met = ratio >= TARGET_RATIO if via != "via_n1" else None
            rows.append(
                (
                    f"{kind}: two nodes, {via.replace('_', ' ')}",
                    f"{rate:,.0f} req/s ({ratio}x)",
                    f">= {TARGET_RATIO}x" if met is not None else "",
                    met,
                )
            )
    hop = r["proxy_hop"]
    rows.append(("proxy hop added p50 / p99", f"{hop['added_p50_ms']} / {hop['added_p99_ms']} ms", "", None))
    rows.append(
        (
            "join: slots settled / moved tenants restored",
            f"{r['join_settle_s']} s / {r['first_access_after_join_s']} s ({r['moved_on_join']} tenants)",
            "",
            None,
        )
    )
    rows.append(("planned drain of n2", f"{r['drain_s']} s ({r['drained_tenants']} tenants)", "", None))
    return rows


@click.command("cluster")
@click.option(
    "--failover",
    is_flag=True,
    help="Measure losing a node instead (ops/bench/failover.py): kill -9 of an owner to the first "
    "write through another node, first-access restore of its tenants, the cost of --ack replica.",
)
@count(
    "--tenants",
    None,
    "Tenants of the fleet workload (about half move on join and on drain) [default: 2000]; with "
    "--failover, the dead node's tenants [default: 10000].",
    minimum=16,
)
@count("--hot-tenants", 64, "Tenants of the hot workload.")
@count("--concurrency", 32)
@seconds("--phase-seconds", 5.0)
@count("--pool-capacity", 1000)
@count("--lease-ttl", 3, "--failover: the nodes' --cluster-lease-ttl.")
@seconds("--takeover-grace", 2.0, "--failover: the nodes' --cluster-takeover-grace.", minimum=0.0)
@count("--ack-slices", 4, "--failover: alternating ack=local/replica slices.")
@seconds("--ack-slice-seconds", 3.0, "--failover: seconds per slice.")
@common_options(default_timeout=1800.0)
def bench_cluster_command(
    failover: bool,
    tenants: int | None,
    hot_tenants: int,
    concurrency: int,
    phase_seconds: float,
    pool_capacity: int,
    lease_ttl: int,
    takeover_grace: float,
    ack_slices: int,
    ack_slice_seconds: float,
    **opts: Any,
) -> None:
    """One node vs two nodes of a cluster (hot and fleet workloads), the proxy hop, a join and a
    drain; with --failover, what losing a node costs."""
    if failover:
        from ops.bench.failover import bench_failover, failover_rows  # it builds on this module

        result = bench_failover(
            opts,
            tenants or 10_000,
            lease_ttl,
            takeover_grace,
            concurrency,
            pool_capacity,
            ack_slices,
            ack_slice_seconds,
        )
        emit(result, failover_rows(result), json_out(opts, "cluster-failover"))
        return
    tenants = tenants or 2000
    if hot_tenants > tenants:
        raise click.UsageError("--hot-tenants must not exceed --tenants")
    result = bench_cluster(opts, tenants, hot_tenants, concurrency, phase_seconds, pool_capacity)
    emit(result, cluster_rows(result), json_out(opts, "cluster"))
