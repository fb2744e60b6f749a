"""`sqlfleet bench backups --against litestream`: sqlfleet and Litestream 0.5 side by side, in one
run, on one S3 test server (moto), under the same write load.

How the comparison is made fair:
- Load: the same rows (100 bytes of text) at the same commit rate (--rate, an open loop: commit
  i goes out at i / rate s, whatever either side's speed), spread over N databases in the same
  shuffled order, with the same durability (WAL, synchronous=FULL). sqlfleet gets them through
  its HTTP API from the load generator; Litestream's databases are plain SQLite files written
  by a writer process of their own (Litestream replicates files an application writes).
- Replication: both every --flush-interval (sqlfleet's flush interval, Litestream's
  sync-interval), to their own prefix of one bucket, with their defaults otherwise (Litestream's
  compaction levels and snapshots included: they are part of what it costs).
- Requests are counted by the S3 server itself, per prefix and per access key, so the bench's
  own probes and listings (another key) are left out. PUTs/s and requests/s are over the load.
- Lag: the same probe for both, from outside: commit one row to a database of its own (the
  N+1st), then poll the bucket until an object holds it (a sqlfleet segment with that tenant's
  commit; a new Litestream LTX file of that database); lag = seen - sent. sqlfleet's own lag
  histogram is reported too.
- CPU per 1,000 commits of the replicator: Litestream's process; sqlfleet's flush thread
  (`sqlfleet_backup_flush_cpu_seconds_total`: capture, packing, upload, catalog). The
  commit-path hook (a few microseconds per commit, in the request threads) is not in it.
- Peak RSS and open descriptors: the Litestream process; the whole sqlfleet server (its SQL
  engine, HTTP and pool included), so these favour Litestream.
- Restore: a --restore-mb MB database, --restore-commits small commits in two halves with a
  pause between, restored to a whole second inside the pause (Litestream's timestamps have
  second resolution); both must come back with exactly the first half.
Each side and size gets a fresh process (sqlfleet server, or Litestream) and its own prefix.
Where Litestream cannot start or keep up (N databases of descriptors each), its column says so.
"""

from __future__ import annotations

import math
import random
import secrets
import sqlite3
import threading
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from backups.segment import FRAMES
from ops.bench import litestream
from ops.bench.driver import Driver, latency_ms
from ops.bench.errors import BenchError
from ops.bench.loadgen import Phase
from ops.bench.report import Row
from ops.bench.s3 import BUCKET, Segments, delta, lag_histogram, quantile, scrape
from ops.bench.server import BenchServer, running_server
from ops.bench.shipping import INSERT_SQL, ROW, admin_http, check, run_sampled, settle, setup_tenants, writes
from ops.moto_s3 import REGION, REQUESTS_PATH, MotoServer, aws_env
from tenants.errors import SqlfleetError
from tenants.rfc3339 import format_time

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

PROBE = "probe"
_BENCH_KEY = "bench"  # the bench's own S3 requests: not counted for either side
_FLUSH_CPU = "sqlfleet_backup_flush_cpu_seconds_total"


def bench_client(s3: MotoServer) -> S3Client:
    """A client whose requests the server counts apart from the replicators' (another key)."""
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(
        aws_access_key_id=_BENCH_KEY, aws_secret_access_key=_BENCH_KEY, region_name=REGION
    )
    config = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3})
    return session.client("s3", endpoint_url=s3.url, config=config)


def request_counts(s3: MotoServer, prefix: str) -> dict[str, int]:
    """The replicators' requests under `prefix`, by method (the S3 server counts them)."""
    rows = httpx.get(f"{s3.url}{REQUESTS_PATH}", timeout=30).json()
    return dict(litestream.counts_by_prefix(rows, aws_env()["AWS_ACCESS_KEY_ID"], prefix))


def _rates(before: dict[str, int], after: dict[str, int], seconds: float) -> dict[str, float]:
    puts = after.get("PUT", 0) - before.get("PUT", 0)
    total = sum(after.values()) - sum(before.values())
    return {"puts_per_s": round(puts / seconds, 2), "requests_per_s": round(total / seconds, 2)}


def _lags(samples: list[float]) -> dict[str, Any]:
    ms = latency_ms(samples)
    return {
        "samples": len(samples),
        "lag_p50_s": round(ms["p50"] / 1000, 3),
        "lag_p99_s": round(ms["p99"] / 1000, 3),
    }


class _Probe:
    """Commits one row to its own database, then polls until the replica has it; random pauses
    spread the probes over the sync cycle. `commit` and `shipped(sent)` are the side's."""

    def __init__(self, commit: Any, shipped: Any, poll: float = 0.02) -> None:
        self.commit, self.shipped, self.poll = commit, shipped, poll
        self.lags: list[float] = []
        self.errors: list[str] = []
        self.commits = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="anchor-probe", daemon=True)

    def start(self) -> None:
        if not self._thread.is_alive() and not self._stop.is_set():
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(90)

    def _run(self) -> None:
        rng = random.Random(11)
        while not self._stop.is_set():
            try:
                sent = time.time()
                self.commit()
                self.commits += 1
                while not self.shipped(sent):
                    if time.time() > sent + 60:
                        raise BenchError(f"the probe's commit of {sent:.3f} was not replicated within 60 s")
                    time.sleep(self.poll)
                self.lags.append(time.time() - sent)
            except Exception as exc:  # reported with the results; the phase goes on
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self._stop.wait(rng.uniform(0.1, 0.6))


# -- sqlfleet ---------------------------------------------------------------------------------------


def sqlfleet_side(
    s3: MotoServer, work: Path, n: int, opts: dict[str, Any], deadline: float
) -> dict[str, Any]:
    interval, rate, seconds = opts["flush_interval"], opts["rate"], opts["seconds"]
    prefix = f"sf-{n}-{secrets.token_hex(3)}"
    args = ["--backup-flush-interval", str(interval)]  # the default pool: at 10,000 most writes open
    client = bench_client(s3)
    segments = Segments(client, BUCKET, prefix)
    with running_server(None, args, s3.server_env(prefix, BUCKET)) as server:
        driver = Driver(server, opts["clients"], deadline)
        ids = [f"d{i:05d}" for i in range(n)]
        setup_tenants(driver, [*ids, PROBE], opts["setup_concurrency"])
        settle(server, interval)
        order = list(range(n))
        random.Random(n).shuffle(order)
        total = int(rate * seconds) + 1
        phase = Phase(
            f"anchor-{n}", writes(driver, ids), total, opts["concurrency"], seconds, order, rate=rate
        )
        seen = {"key": segments.last()}
        with admin_http(server) as http:

            def commit() -> None:
                r = http.post(f"/v1/tenants/{PROBE}/query", json={"sql": INSERT_SQL, "params": ["probe"]})
                r.raise_for_status()

            def shipped(sent: float) -> bool:
                for key, _ in segments.after(seen["key"]):
                    seen["key"] = key
                    for c in segments.chunks(key):
                        if c.tenant == PROBE and c.kind == FRAMES and c.commits[-1][1] >= sent:
                            return True
                return False

            probe = _Probe(commit, shipped)
            peak_fds = 0

            def tick() -> None:
                nonlocal peak_fds
                probe.start()
                peak_fds = max(peak_fds, _fds(server))

            before, counts0, cpu0 = scrape(server.url), request_counts(s3, prefix), server.cpu_seconds()
            try:
                result = run_sampled(server, phase, driver.clients, on_tick=tick)
            finally:
                probe.stop()
            counts1, cpu = request_counts(s3, prefix), server.cpu_seconds() - cpu0
            after = scrape(server.url)
        settle(server, interval)
        buckets = lag_histogram(before, scrape(server.url))
        commits = result.ok + probe.commits
        flush_cpu = delta(before, after, _FLUSH_CPU)
        return {
            "databases": n,
            "commits": commits,
            "errors": result.errors,
            "commits_per_s": round(result.sent / result.elapsed, 1) if result.elapsed else 0.0,
            **_rates(counts0, counts1, result.elapsed),
            "requests": {k: counts1.get(k, 0) - counts0.get(k, 0) for k in counts1},
            **_lags(probe.lags),
            "probe_errors": probe.errors[:3],
            "server_lag_p50_s": round(quantile(buckets, 0.5), 3),
            "server_lag_p99_s": round(quantile(buckets, 0.99), 3),
            "cpu_s_per_1000_commits": round(flush_cpu / commits * 1000, 4) if commits else None,
            "process_cpu_s_per_1000_commits": round(cpu / commits * 1000, 4) if commits else None,
            "peak_rss_bytes": server.high_water(),
            "peak_open_fds": peak_fds,
        }


def _fds(server: BenchServer) -> int:
    try:
        return int(server.ps.num_fds())
    except Exception:
        return 0


# -- Litestream -------------------------------------------------------------------------------------


def litestream_side(s3: MotoServer, exe: str, work: Path, n: int, opts: dict[str, Any]) -> dict[str, Any]:
    interval, rate, seconds = opts["flush_interval"], opts["rate"], opts["seconds"]
    prefix = f"ls-{n}-{secrets.token_hex(3)}"
    directory = work / f"litestream-{n}"
    names = [f"d{i:05d}" for i in range(n)]
    paths = litestream.make_databases(directory, [*names, PROBE])
    probe_db = paths[-1]
    client = bench_client(s3)
    out: dict[str, Any] = {"databases": n}
    with litestream.replicating(exe, directory, paths, s3.url, BUCKET, prefix, interval) as (replicator, _):
        try:
            # every database's first snapshot, before the load: as sqlfleet's set-up is before it
            litestream.wait_synced(replicator, lambda: _snapshots(client, prefix), n + 1, 60 + n / 20)
        except BenchError as exc:
            return {**out, "broken": f"did not start replicating {n + 1} databases: {_first_line(exc)}"}
        order = list(range(n))
        random.Random(n).shuffle(order)
        last = {"key": _last_key(client, f"{prefix}/{PROBE}/0000/")}

        def commit() -> None:
            litestream.write_once(probe_db, INSERT_SQL, ["probe"])

        def shipped(sent: float) -> bool:
            keys = _keys_after(client, f"{prefix}/{PROBE}/0000/", last["key"])
            if keys:
                last["key"] = keys[-1]
                return True
            return False

        probe = _Probe(commit, shipped)

        def tick() -> None:
            probe.start()
            replicator.sample()

        counts0, cpu0 = request_counts(s3, prefix), replicator.cpu_seconds()
        try:
            written = litestream.paced_writes(paths[:-1], order, rate, seconds, ROW, on_tick=tick)
        finally:
            probe.stop()
        counts1, cpu = request_counts(s3, prefix), replicator.cpu_seconds() - cpu0
        commits = written["commits"] + probe.commits
        out.update(
            {
                "commits": commits,
                "errors": written["errors"],
                "commits_per_s": round(written["commits"] / written["elapsed"], 1),
                **_rates(counts0, counts1, written["elapsed"]),
                "requests": {k: counts1.get(k, 0) - counts0.get(k, 0) for k in counts1},
                **_lags(probe.lags),
                "probe_errors": probe.errors[:3],
                "cpu_s_per_1000_commits": round(cpu / commits * 1000, 4) if commits else None,
                "peak_rss_bytes": replicator.high_water(),
                "peak_open_fds": replicator.peak_fds,
            }
        )
        if not replicator.alive():
            out["broken"] = f"litestream exited during the load: {replicator.log_tail(5)}"
        elif probe.errors and not probe.lags:
            out["broken"] = f"no commit replicated: {probe.errors[0]}"
    return out


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _snapshots(client: S3Client, prefix: str) -> int:
    """Databases with a first snapshot under `prefix` (one object in each's level-0 dir)."""
    seen = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{prefix}/"):
        for o in page.get("Contents", []):
            seen.add(o["Key"].split("/")[1])
    return len(seen)


def _keys_after(client: S3Client, prefix: str, after: str) -> list[str]:
    r = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix, StartAfter=after or prefix)
    return [o["Key"] for o in r.get("Contents", [])]


def _last_key(client: S3Client, prefix: str) -> str:
    keys = _keys_after(client, prefix, "")
    return keys[-1] if keys else ""


# -- restore ----------------------------------------------------------------------------------------

_BLOBS = (
    "INSERT INTO blobs(b) WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
    "SELECT randomblob(?) FROM n"
)


def _logical_size(path: Path) -> int:
    conn = sqlite3.connect(path, timeout=30)
    try:
        pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
        return pages * int(conn.execute("PRAGMA page_size").fetchone()[0])
    finally:
        conn.close()


def _mid_second(interval: float) -> float:
    """Sleep through a pause between the halves, returning a whole second inside it: at least one
    sync `interval` + 0.3 s after the first half (Litestream's restore points are its syncs: a
    moment before the sync that carried the first half may restore without it) and 0.3 s before
    the second half."""
    mid = float(math.ceil(time.time() + interval + 0.3))
    time.sleep(max(0.0, mid + 0.3 - time.time()))
    return mid


def restores(s3: MotoServer, exe: str, work: Path, opts: dict[str, Any], deadline: float) -> dict[str, Any]:
    """A --restore-mb MB database with --restore-commits commits in two halves, restored by each
    side to a second between the halves."""
    mb, commits, interval = opts["restore_mb"], opts["restore_commits"], opts["flush_interval"]
    half = commits // 2
    return {
        "db_mb": mb,
        "commits": commits,
        "sqlfleet": _sqlfleet_restore(s3, mb, half, interval, opts, deadline),
        "litestream": _litestream_restore(s3, exe, work, mb, half, interval),
    }


def _sqlfleet_restore(
    s3: MotoServer, mb: int, half: int, interval: float, opts: dict[str, Any], deadline: float
) -> dict[str, Any]:
    prefix = f"sf-restore-{secrets.token_hex(3)}"
    args = ["--backup-flush-interval", str(interval)]
    with running_server(None, args, s3.server_env(prefix, BUCKET)) as server:
        driver = Driver(server, opts["clients"], deadline)
        setup_tenants(driver, ["big"], 1)

        def query(sql: str, params: list[Any] | None = None) -> bytes:
            return driver.request("POST", "/v1/tenants/big/query", {"sql": sql, "params": params or []})

        check(driver.run("blobs", [query("CREATE TABLE blobs (b BLOB)")], 1, 1), 1, "blobs", server)
        check(driver.run("load", [query(_BLOBS, [256, 4000])], mb, 1), mb, "load", server)
        insert = [query(INSERT_SQL, [ROW])]
        check(driver.run("first", insert, half, 4), half, "first half", server)
        mid = _mid_second(interval)
        check(driver.run("second", insert, half, 4), half, "second half", server)
        settle(server, interval)
        with admin_http(server, timeout=600) as http:
            size = http.get("/v1/admin/tenants/big").json()["size"]
            started = time.perf_counter()
            r = http.post(
                "/v1/admin/tenants/big/restore", json={"timestamp": format_time(mid), "as": "big-mid"}
            )
            seconds = time.perf_counter() - started
            if r.status_code != 200:
                raise BenchError(f"sqlfleet restore failed: {r.status_code} {r.text}\n{server.log_tail()}")
            rows = http.post("/v1/tenants/big-mid/query", json={"sql": "SELECT count(*) FROM kv"}).json()
    return {
        "db_bytes": size,
        "seconds": round(seconds, 3),
        "rows": rows["rows"][0][0],
        "exact": rows["rows"][0][0] == half,
    }


def _litestream_restore(
    s3: MotoServer, exe: str, work: Path, mb: int, half: int, interval: float
) -> dict[str, Any]:

    prefix = f"ls-restore-{secrets.token_hex(3)}"
    directory = work / "litestream-restore"
    (path,) = litestream.make_databases(directory, ["big"])
    client = bench_client(s3)
    with litestream.replicating(exe, directory, [path], s3.url, BUCKET, prefix, interval) as (
        replicator,
        cfg,
    ):
        litestream.wait_synced(replicator, lambda: _snapshots(client, prefix), 1, 60)
        litestream.write_once(path, "CREATE TABLE blobs (b BLOB)")
        for _ in range(mb):
            litestream.write_once(path, _BLOBS, [256, 4000])
        for _ in range(half):
            litestream.write_once(path, INSERT_SQL, [ROW])
        mid = _mid_second(interval)
        for _ in range(half):
            litestream.write_once(path, INSERT_SQL, [ROW])
        time.sleep(3 * interval + 1)  # a few syncs: everything is in the bucket
        size = _logical_size(path)  # most of it may still be in the WAL
        out = directory / "restored.db"
        seconds = litestream.restore(
            exe, cfg, path, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(mid)), out
        )
    conn = sqlite3.connect(out)
    try:
        rows = int(conn.execute("SELECT count(*) FROM kv").fetchone()[0])
    finally:
        conn.close()
    return {"db_bytes": size, "seconds": round(seconds, 3), "rows": rows, "exact": rows == half}


# -- the run and its table ---------------------------------------------------------------------------


def compare(s3: MotoServer, work: Path, opts: dict[str, Any], deadline: float) -> dict[str, Any]:
    exe = litestream.executable()
    result: dict[str, Any] = {
        "bench": "backups-against-litestream",
        "litestream_version": litestream.version(exe),
        "rate": opts["rate"],
        "seconds": opts["seconds"],
        "flush_interval": opts["flush_interval"],
        "sizes": [],
    }
    for n in opts["sizes"]:
        sf = _guarded(partial(sqlfleet_side, s3, work, n, opts, deadline), n)
        ls = _guarded(partial(litestream_side, s3, exe, work, n, opts), n)
        result["sizes"].append({"databases": n, "sqlfleet": sf, "litestream": ls})
    if opts["restore_mb"]:
        result["restore"] = restores(s3, exe, work, opts, deadline)
    return result


def _guarded(side: Any, n: int) -> dict[str, Any]:
    """One side at one size; a failure is its result (the other sizes still run)."""
    try:
        result: dict[str, Any] = side()
    except SqlfleetError as exc:
        return {"databases": n, "broken": _first_line(exc)}
    return result


def _ratio(ls: Any, sf: Any) -> str:
    if not isinstance(ls, (int, float)) or not isinstance(sf, (int, float)) or not sf:
        return ""
    return f" ({ls / sf:.2g}x)"


_COLUMNS = [
    ("PUTs/s", "puts_per_s", "{:g}"),
    ("requests/s", "requests_per_s", "{:g}"),
    ("lag p50 / p99 s (probe)", None, ""),
    ("CPU s per 1,000 commits", "cpu_s_per_1000_commits", "{:.3g}"),
    ("peak RSS MB", "peak_rss_bytes", "{:.0f}"),
    ("open fds (peak)", "peak_open_fds", "{:d}"),
]


def rows(r: dict[str, Any]) -> list[Row]:
    """One row per size and metric: sqlfleet vs Litestream (Litestream / sqlfleet)."""
    out: list[Row] = [
        ("Litestream", r["litestream_version"], "", None),
        ("load", f"{r['rate']:g} commits/s over N databases, {r['seconds']:g} s", "", None),
        ("each row", "sqlfleet vs Litestream (Litestream / sqlfleet)", "", None),
    ]
    for size in r["sizes"]:
        n, sf, ls = size["databases"], size["sqlfleet"], size["litestream"]
        for name, side in (("sqlfleet", sf), ("Litestream", ls)):
            if "broken" in side and "commits" not in side:
                out.append((f"N={n:,}: {name}", f"broke: {side['broken']}"[:200], "", None))
        if "commits" not in sf and "commits" not in ls:
            continue
        for label, key, fmt in _COLUMNS:
            if key is None:
                value = " vs ".join(
                    f"{x['lag_p50_s']} / {x['lag_p99_s']}" if "lag_p99_s" in x else "-" for x in (sf, ls)
                )
            else:
                a, b = sf.get(key), ls.get(key)
                if key == "peak_rss_bytes":
                    a, b = (None if x is None else x / 1e6 for x in (a, b))
                value = f"{_fmt(fmt, a)} vs {_fmt(fmt, b)}{_ratio(b, a)}"
            out.append((f"N={n:,}: {label}", value, "", None))
        if "broken" in ls and "commits" in ls:
            out.append((f"N={n:,}: Litestream", f"broke: {ls['broken']}"[:200], "", None))
    if "restore" in r:
        x = r["restore"]
        sf, ls = x["sqlfleet"], x["litestream"]
        value = f"{sf['seconds']} vs {ls['seconds']} s{_ratio(ls['seconds'], sf['seconds'])}"
        exact = sf["exact"] and ls["exact"]
        out.append((f"restore {x['db_mb']} MB to a mid timestamp", value, "both exact", exact))
    return out


def _fmt(fmt: str, value: Any) -> str:
    if value is None:
        return "-"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)
