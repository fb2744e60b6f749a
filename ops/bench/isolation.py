"""`sqlfleet bench isolation`: issue 10's benchmark. One victim tenant sends point reads and
small writes (one in five) at a steady rate, an open loop, while K attacker tenants send the
issue's hostile inputs in a loop (`ops.bench.attacks`), all in one run and against one server:

    quiet          the victim alone
    attack         the victim and K attackers; the phase ends once every attacker has finished
                   the attack it was in (the server bounds each)
    quiet_again    the victim alone, after the attack

Reported side by side: the victim's p50/p99 in each phase, the server's peak RSS in each (the
kernel's high-water mark, reset per phase; ops.bench.footprint) and the disk its data dir and
local replica grew by, against the bounds the server was started with. Targets: the victim's
p99 under attack at most 3x its quiet p99 (both quiet phases together), RSS growth at most
256 MiB over the quiet peak, disk growth within the configured bounds, no 5xx for an attack
other than 503 (busy) and 504 (time limit).

Each phase also reports how long the server's event loop thread waited for a CPU while
runnable (its run-queue wait, from the kernel): where that grows under attack, the victim's
latency is the machine's CPU contention (other processes, or the server's own worker threads),
not a lock or a queue inside the server.

Pitfalls: the victim's latency is measured from when a request is sent; a request whose slot
came while all `--concurrency` connections were waiting is sent late, not counted late, so keep
the connections many times the rate x the stalls you want to see. The attackers' own client
work runs at a lower priority (`--attacker-nice`): on a 2-core machine it would otherwise be
charged to the server.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from ops.bench.attacks import KINDS, SETUP, Attacker, Attackers, Tally
from ops.bench.driver import QUERY_SQL, Driver, latency_ms, summary
from ops.bench.errors import BenchError
from ops.bench.footprint import Footprint
from ops.bench.loadgen import Phase, PhaseResult, run_phase
from ops.bench.options import common_options, count, seconds, session
from ops.bench.report import Row, emit, json_out
from ops.bench.server import BenchServer
from ops.bench.shipping import check

MIB = 1 << 20
TARGETS = {"p99_ratio": 3.0, "rss_growth_bytes": 256 * MIB}
ROWS = 1000
WRITE_SQL = "UPDATE kv SET v = ? WHERE k = ?"
WRITE_EVERY = 5  # one victim request in five is a write
WARMUP = 2.0  # seconds of victim load before measuring: tokens verified, inline plans judged
STOP_WAIT = 120.0  # attackers finish their current attack: bounded by the server's request_timeout
SERVER_FILES = 16 * MIB  # what the server's own files may grow by: catalog, segment index
PHASES = ("quiet", "attack", "quiet_again")


@dataclass(frozen=True)
class Load:
    attackers: int
    seconds: float
    rate: float
    concurrency: int
    slow_bodies: int
    nice: int
    kinds: tuple[str, ...]


@dataclass(frozen=True)
class Bounds:
    """The disk bounds the server runs with (`--max-db-bytes`, `--max-wal-bytes`,
    `--backup-tenant-quota-bytes`)."""

    max_db_bytes: int
    max_wal_bytes: int
    replica_quota_bytes: int

    def serve_args(self) -> list[str]:
        return [
            *("max-db-bytes=" + str(self.max_db_bytes), "max-wal-bytes=" + str(self.max_wal_bytes)),
            "backup-tenant-quota-bytes=" + str(self.replica_quota_bytes),
        ]

    def per_tenant(self) -> int:
        """What one writing tenant may add to the disk: its file, its WAL and its replica
        quota, each of which the one transaction that crosses it may overshoot (a transaction
        writes at most max_db_bytes of pages), plus the shipper's spooled copy of its
        unshipped WAL."""
        txn, wal = self.max_db_bytes, self.max_wal_bytes
        return self.max_db_bytes + (wal + txn) + (self.replica_quota_bytes + txn) + (wal + txn)


def _turn(kinds: tuple[str, ...], start: int) -> tuple[str, ...]:
    return kinds[start:] + kinds[:start]


def victim_requests(driver: Driver, token: str) -> list[bytes]:
    out = []
    for i in range(ROWS):
        k = i * 7919 % ROWS + 1
        write = i % WRITE_EVERY == WRITE_EVERY - 1
        body = {"sql": WRITE_SQL, "params": [f"w{i}", k]} if write else {"sql": QUERY_SQL, "params": [k]}
        out.append(driver.request("POST", "/v1/tenants/victim/query", body, token))
    return out


class _Victim:
    def __init__(self, server: BenchServer, driver: Driver, load: Load, requests: list[bytes]) -> None:
        self.server, self.driver, self.load, self.requests = server, driver, load, requests

    def run(self, name: str, seconds: float, footprint: Footprint | None = None) -> tuple[PhaseResult, Usage]:
        """The victim's open loop for `seconds`; returns its result and the server's CPU use."""
        left = self.driver.deadline - time.monotonic()
        if left <= 0:
            raise BenchError(f"time budget exhausted before phase {name}")
        total = max(1, round(self.load.rate * seconds))
        bound = min(left, seconds * 1.5 + 10)  # a late phase is reported incomplete, not waited for
        phase = Phase(name, self.requests, total, self.load.concurrency, bound, rate=self.load.rate)
        cpu0, wait0 = self.server.cpu_seconds(), loop_wait(self.server)
        tick = footprint.tick if footprint is not None else self.server.sample
        result = run_phase(self.server.url, phase, self.driver.clients, on_tick=tick)
        return result, Usage(self.server.cpu_seconds() - cpu0, loop_wait(self.server) - wait0)


@dataclass(frozen=True)
class Usage:
    """The server's CPU seconds in a phase, and how long its event loop's thread waited for a
    CPU meanwhile (runnable, not running: the machine's other work, or the server's own)."""

    cpu: float
    loop_wait: float


def loop_wait(server: BenchServer) -> float:
    """Seconds the server's main thread (its event loop) has spent waiting on a run queue
    (Linux: /proc/PID/task/PID/schedstat; 0 elsewhere)."""
    pid = server.proc.pid
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[1]) / 1e9
    return 0.0


def bench_isolation(server: BenchServer, driver: Driver, load: Load, bounds: Bounds) -> dict[str, Any]:
    attacker_ids = [f"attacker{i}" for i in range(load.attackers)]
    ids = ["victim", *attacker_ids]
    tokens, setup = driver.setup(ids, ROWS, min(len(ids), 16))
    if attacker_ids:
        body = {"statements": [{"sql": sql} for sql in SETUP]}
        plan = [driver.request("POST", f"/v1/tenants/{t}/batch", body) for t in attacker_ids]
        check(
            driver.run("attack-setup", plan, len(plan), min(len(plan), 8)),
            len(plan),
            "attacker set-up",
            server,
        )
    attackers = [
        # each starts at another kind, so that together they send every kind at once
        Attacker(tenant, token, _turn(load.kinds, i * len(load.kinds) // load.attackers))
        for i, (tenant, token) in enumerate(zip(attacker_ids, tokens[1:], strict=True))
    ]
    victim = _Victim(server, driver, load, victim_requests(driver, tokens[0]))
    victim.run("warm", WARMUP)

    footprint = Footprint(server)
    results: dict[str, tuple[PhaseResult, Usage]] = {}
    tallies: dict[str, Tally] = {}
    stopping = 0.0
    with driver.measuring():
        footprint.begin("quiet")
        results["quiet"] = victim.run("quiet", load.seconds, footprint)
        footprint.end()
        footprint.begin("attack")
        running = Attackers(server.url, attackers, load.slow_bodies, load.nice) if attackers else None
        try:
            results["attack"] = victim.run("attack", load.seconds, footprint)
        except BaseException:
            if running is not None:
                running.close()
            raise
        started = time.monotonic()
        if running is not None:
            tallies = running.stop(STOP_WAIT, footprint.tick)
        stopping = time.monotonic() - started
        footprint.end()
        footprint.begin("quiet_again")
        results["quiet_again"] = victim.run("quiet_again", load.seconds, footprint)
        footprint.end()
    return _result(load, bounds, setup, results, footprint, tallies, stopping)


def _result(
    load: Load,
    bounds: Bounds,
    setup: dict[str, Any],
    results: dict[str, tuple[PhaseResult, Usage]],
    footprint: Footprint,
    tallies: dict[str, Tally],
    stopping: float,
) -> dict[str, Any]:
    phases = {}
    for name, (result, usage) in results.items():
        phases[name] = {
            **summary([result], usage.cpu),
            "loop_wait_seconds": round(usage.loop_wait, 3),
            "statuses": {str(s): n for s, n in sorted(result.statuses.items())},
            "complete": not result.timed_out,
            **footprint.phases[name],
        }
    quiet = latency_ms([*results["quiet"][0].latencies, *results["quiet_again"][0].latencies])
    attack = phases["attack"]["latency_ms"]
    base_data, base_replica = footprint.baseline
    growth = {
        "data_bytes": max(p["peak_data_bytes"] for p in phases.values()) - base_data,
        "replica_bytes": max(p["peak_replica_bytes"] for p in phases.values()) - base_replica,
        "end_data_bytes": phases["quiet_again"]["end_data_bytes"] - base_data,
        "end_replica_bytes": phases["quiet_again"]["end_replica_bytes"] - base_replica,
    }
    growth["peak_bytes"] = growth["data_bytes"] + growth["replica_bytes"]
    writers = load.attackers + 1
    unexpected = {
        kind: {s: n for s, n in t.statuses.items() if s == 0 or (s >= 500 and s not in (503, 504))}
        for kind, t in tallies.items()
        if kind != "slow_body"
    }
    quiet_rss = phases["quiet"]["peak_rss_bytes"]
    attack_rss = max(phases["attack"]["peak_rss_bytes"], phases["quiet_again"]["peak_rss_bytes"])
    return {
        "bench": "isolation",
        "attackers": load.attackers,
        "seconds": load.seconds,
        "victim_rate": load.rate,
        "victim_concurrency": load.concurrency,
        "slow_bodies_per_attacker": load.slow_bodies,
        "attacker_nice": load.nice,
        "attack_kinds": list(load.kinds),
        "setup": setup,
        "phases": phases,
        "quiet_latency_ms": quiet,
        "p99_ratio": round(attack["p99"] / quiet["p99"], 3) if quiet["p99"] else 0.0,
        "rss": {
            "quiet_peak_bytes": quiet_rss,
            "attack_peak_bytes": attack_rss,
            "growth_bytes": attack_rss - quiet_rss,
        },
        "disk": {
            "baseline_data_bytes": base_data,
            "baseline_replica_bytes": base_replica,
            "growth": growth,
            "bound_bytes": writers * bounds.per_tenant() + SERVER_FILES,
            "bound_per_tenant_bytes": bounds.per_tenant(),
            "writing_tenants": writers,
            "settings": {
                "max_db_bytes": bounds.max_db_bytes,
                "max_wal_bytes": bounds.max_wal_bytes,
                "backup_tenant_quota_bytes": bounds.replica_quota_bytes,
            },
        },
        "attacks": {kind: tallies[kind].report() for kind in sorted(tallies)},
        "attack_unexpected_statuses": {
            k: {str(s): n for s, n in v.items()} for k, v in unexpected.items() if v
        },
        "attackers_stop_seconds": round(stopping, 2),
    }


def _mib(n: int) -> str:
    return f"{n / MIB:,.1f} MiB"


def rows(r: dict[str, Any]) -> list[Row]:
    out: list[Row] = [
        ("attackers (K)", f"{r['attackers']}", "", None),
        ("victim rate, connections", f"{r['victim_rate']:g} req/s, {r['victim_concurrency']}", "", None),
    ]
    for name in PHASES:
        ph = r["phases"][name]
        lat = ph["latency_ms"]
        out.append(
            (
                f"{name}: victim requests (errors)",
                f"{ph['requests']:,} ({ph['errors']:,}){'' if ph['complete'] else ' INCOMPLETE'}",
                "0 errors",
                ph["errors"] == 0 and ph["complete"],
            )
        )
        out.append(
            (f"{name}: victim p50 / p99 / max", f"{lat['p50']} / {lat['p99']} / {lat['max']} ms", "", None)
        )
        out.append(
            (
                f"{name}: server cores, loop's run-queue wait",
                f"{ph['server_cores']}, {ph['loop_wait_seconds']} s",
                "",
                None,
            )
        )
    quiet = r["quiet_latency_ms"]
    out.append(("quiet (both): victim p50 / p99", f"{quiet['p50']} / {quiet['p99']} ms", "", None))
    ratio = r["p99_ratio"]
    out.append(
        (
            "victim p99 attack / quiet",
            f"{ratio:.2f}x",
            f"<= {TARGETS['p99_ratio']:g}x",
            ratio <= TARGETS["p99_ratio"],
        )
    )
    rss = r["rss"]
    out.append(
        (
            "server peak RSS quiet / attack",
            f"{_mib(rss['quiet_peak_bytes'])} / {_mib(rss['attack_peak_bytes'])}",
            "",
            None,
        )
    )
    growth_ok = rss["growth_bytes"] <= TARGETS["rss_growth_bytes"]
    out.append(("server peak RSS growth", _mib(rss["growth_bytes"]), "<= 256 MiB", growth_ok))
    d = r["disk"]
    g = d["growth"]
    out.append(
        (
            "disk growth, peak: data + replica",
            f"{_mib(g['data_bytes'])} + {_mib(g['replica_bytes'])} "
            f"(at the end {_mib(g['end_data_bytes'] + g['end_replica_bytes'])})",
            f"<= {_mib(d['bound_bytes'])}",
            g["peak_bytes"] <= d["bound_bytes"],
        )
    )
    for kind, t in r["attacks"].items():
        statuses = ", ".join(f"{s}: {n}" for s, n in t["statuses"].items())
        out.append((f"attack {kind}", f"{t['runs']} runs ({statuses}), mean {t['seconds_mean']} s", "", None))
    if r["attackers"]:
        bad = r["attack_unexpected_statuses"]
        text = "none" if not bad else "; ".join(f"{k} {v}" for k, v in bad.items())
        out.append(("attack answers: 5xx but 503/504, or none", text, "none", not bad))
        out.append(("attackers stopped in", f"{r['attackers_stop_seconds']} s", "", None))
    return out


def _kinds(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in value.split(",") if k.strip())
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise click.BadParameter(f"unknown: {', '.join(sorted(unknown))}; known: {', '.join(KINDS)}")
    return kinds


@click.command("isolation")
@count("--attackers", 8, "Attacker tenants (K); 0 measures the phases' spread alone.", minimum=0)
@seconds("--seconds", 30.0, "Length of each victim phase: quiet, attack, quiet again.", minimum=1.0)
@seconds(
    "--rate", 100.0, "Victim requests per second (an open loop), one in five a small write.", minimum=1.0
)
@count("--concurrency", 32, "Victim connections (many: a stall shows as many slow requests).")
@count("--slow-bodies", 25, "Connections each attacker keeps dribbling a request body into.", minimum=0)
@count("--max-db-bytes", 2 * MIB, "The server's --max-db-bytes.")
@count("--max-wal-bytes", 16 * MIB, "The server's --max-wal-bytes.")
@count("--replica-quota-bytes", 32 * MIB, "The server's --backup-tenant-quota-bytes.")
@count("--attacker-nice", 10, "Niceness of the attackers' client processes.", minimum=0, maximum=19)
@click.option(
    "--attacks",
    default=",".join(KINDS),
    show_default=True,
    callback=_kinds,
    help="The kinds of attack each attacker sends in turn (slow bodies: --slow-bodies).",
)
@common_options(default_timeout=900.0)
def isolation(
    attackers: int,
    seconds: float,
    rate: float,
    concurrency: int,
    slow_bodies: int,
    max_db_bytes: int,
    max_wal_bytes: int,
    replica_quota_bytes: int,
    attacker_nice: int,
    attacks: tuple[str, ...],
    **opts: Any,
) -> None:
    """A victim tenant's latency alone, under attack by K hostile tenants, and alone again;
    the server's peak RSS and disk growth in each phase."""
    bounds = Bounds(max_db_bytes, max_wal_bytes, replica_quota_bytes)
    load = Load(attackers, seconds, rate, concurrency, slow_bodies, attacker_nice, attacks)
    opts = {**opts, "serve_arg": (*bounds.serve_args(), *opts["serve_arg"])}
    with session(opts, None) as (server, driver):
        result = bench_isolation(server, driver, load, bounds)
    result["server_exit_code"] = server.proc.returncode
    emit(result, rows(result), json_out(opts, "isolation"))
