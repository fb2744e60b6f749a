"""`sqlfleet bench cluster --failover` (issue 17): what losing a node costs, on this machine.

1. Two nodes with a short lease TTL and takeover grace (both in the report), one etcd member, one
   shared replica directory; N tenants created on n2 (ids picked by their slots' assignment), each
   with a `kv` table, every commit shipped.
2. Writes to one of n2's tenants go on through n1 while n2 is killed with SIGKILL: the seconds
   from the kill to the first write sent after it and acknowledged (target: TTL + grace + 2 s),
   and how many writes acknowledged before the kill are missing after (ack=local may lose up to
   about one flush interval of them; none is the norm). Where those seconds went, from n1's
   cluster status polled meanwhile and its log: lease expiry, grace, takeover, claim (assign,
   claims, routing), first write (proxy, restore on first access, the client's retry). Catalogs
   are uploaded every second (as the cluster tests do), so a takeover reads little.
3. First access through n1 of every tenant n2 had (each restored from the replica: snapshot and
   segments below the fence), requests that answer 503 sent again: seconds until all answered.
4. The cost of `--ack replica` (ops.bench.ack.measure_ack, two servers on a moto S3 server):
   write latency p50/p99 and throughput against ack=local, same run.
"""

from __future__ import annotations

import contextlib
import datetime
import shutil
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from cluster.slots import SLOTS, assignment, slot_of
from ops.bench.ack import measure_ack
from ops.bench.cluster import Cluster, running_cluster
from ops.bench.driver import Driver
from ops.bench.errors import BenchError
from ops.bench.options import serve_args
from ops.bench.report import Row
from ops.moto_s3 import MotoServer
from ops.process import signals_deferred

CATALOG_UPLOAD_INTERVAL = 1.0  # seconds: the nodes' --backup-catalog-upload-interval
POLL = 0.1  # seconds between looks at the cluster status while the failover runs
SLACK = 2.0  # seconds over lease TTL + grace the first write after a kill may take (issue 17)
PROBE_TIMEOUT = 5.0  # seconds one probe write may take
PROBE_WARMUP = 2.0  # seconds of probe writes before the kill
FAILOVER_WAIT = 120.0  # seconds past TTL + grace a failover may take before the run gives up


def bench_failover(
    opts: dict[str, Any],
    tenants: int,
    lease_ttl: int,
    grace: float,
    concurrency: int,
    pool_capacity: int,
    ack_slices: int,
    ack_slice_seconds: float,
) -> dict[str, Any]:
    deadline = time.monotonic() + opts["timeout"]
    flags = ["--cluster-lease-ttl", str(lease_ttl), "--cluster-takeover-grace", str(grace)]
    # catalogs uploaded every second, as the cluster tests do: a takeover then reads an upload
    # and the few segments after it (the default, 300 s, would make it read minutes of them)
    flags += ["--backup-catalog-upload-interval", str(CATALOG_UPLOAD_INTERVAL), "--log-format", "text"]
    result: dict[str, Any] = {
        "bench": "cluster-failover",
        "tenants": tenants,
        "lease_ttl_s": lease_ttl,
        "takeover_grace_s": grace,
        "failover_target_s": lease_ttl + grace + SLACK,
    }
    with running_cluster(opts, pool_capacity, flags) as cluster:
        n1, n2 = cluster.start("n1"), cluster.start("n2")
        cluster.settle(["n1", "n2"], "two nodes")
        owners = assignment(["n1", "n2"])
        ids = [t for t in (f"f{i:07d}" for i in range(50 * tenants)) if owners[slot_of(t)] == "n2"][:tenants]
        tokens, result["setup"] = Driver(n2, opts["clients"], deadline).setup(ids, 10, 64)
        probe = Probe(cluster, n1.url, ids[0])
        with _admin(cluster, n2.url) as http:  # ships every commit (the listing flushes first)
            http.get("/v1/admin/backups/tenants").raise_for_status()
        with probe, Timeline(cluster, n1.url) as timeline:
            probe.wait_for(PROBE_WARMUP, deadline)
            killed, killed_wall = time.monotonic(), time.time()
            n2.kill9()
            timeline.start()
            result["killed_at"] = time.strftime("%H:%M:%S", time.localtime())  # to read the log against
            give_up = min(deadline, killed + lease_ttl + grace + FAILOVER_WAIT)
            try:
                first = probe.first_after(killed, give_up)
            except BenchError as exc:
                raise BenchError(f"{exc}; n1's log:\n{n1.log_tail(40)}") from None
            result["failover_s"] = round(first - killed, 2)
            timeline.wait_owned(give_up)
            result["probe"] = probe.check(killed)
        # what the takeover itself says it took (its log line), for telling its part apart
        log = n1.log().splitlines()
        result["takeover_log"] = [line for line in log if "took over node" in line][-3:]
        result["phases"] = timeline.phases(killed_wall, log, killed_wall + (first - killed))
        result["restore"] = _first_access(Driver(n1, opts["clients"], deadline), ids, tokens, concurrency)
    left = deadline - time.monotonic()
    if left <= 0:
        raise BenchError("time budget exhausted before the ack measurement")
    work = Path(tempfile.mkdtemp(prefix="sqlfleet-bench-ack-"))
    try:
        with MotoServer(work / "moto.log") as s3:
            result["ack"] = measure_ack(
                s3,
                slices=ack_slices,
                slice_seconds=ack_slice_seconds,
                timeout=left,
                serve_args=serve_args(None, opts["worker_threads"], opts["serve_arg"]),
            )
    finally:
        with signals_deferred():
            shutil.rmtree(work, ignore_errors=True)
    return result


def _admin(cluster: Cluster, url: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {cluster.admin_key}"}, timeout=60)


class Probe:
    """Inserts into one tenant through one node from a thread, one at a time, noting when each
    was sent and whether it was acknowledged (an answer other than 200, or none, is retried
    with the next number after a short pause)."""

    def __init__(self, cluster: Cluster, url: str, tenant: str) -> None:
        self.tenant = tenant
        self.http = _admin(cluster, url)
        self.http.timeout = httpx.Timeout(PROBE_TIMEOUT)
        r = self.http.post(f"/v1/tenants/{tenant}/query", json={"sql": "CREATE TABLE probe (n INTEGER)"})
        if r.status_code != 200:
            raise BenchError(f"probe table: {r.status_code} {r.text}")
        self.acked: list[tuple[float, float, int]] = []  # (sent, answered, n), monotonic
        self.refused: Counter[str] = Counter()  # answers other than 200 (or the error), by kind
        self.last_refusal = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._write, name="bench-probe", daemon=True)

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(PROBE_TIMEOUT * 2)
        self.http.close()

    def _write(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            sent = time.monotonic()
            try:
                r = self.http.post(
                    f"/v1/tenants/{self.tenant}/query", json={"sql": f"INSERT INTO probe VALUES ({n})"}
                )
            except httpx.HTTPError as exc:
                self.refused[type(exc).__name__] += 1
                self.last_refusal = str(exc)
            else:
                if r.status_code == 200:
                    self.acked.append((sent, time.monotonic(), n))
                    continue
                self.refused[str(r.status_code)] += 1
                self.last_refusal = r.text[:300]
            self._stop.wait(0.02)

    def wait_for(self, seconds: float, deadline: float) -> None:
        """Until writes have been acknowledged for `seconds`."""
        while not self.acked or self.acked[-1][1] - self.acked[0][1] < seconds:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise BenchError(f"the probe got {len(self.acked)} writes acknowledged before the kill")
            time.sleep(0.01)

    def first_after(self, moment: float, deadline: float) -> float:
        """When the first write sent after `moment` was acknowledged. Raises BenchError."""
        while True:
            after = [answered for sent, answered, _ in self.acked if sent > moment]
            if after:
                return after[0]
            if time.monotonic() > deadline:
                raise BenchError(
                    f"no write was acknowledged in {deadline - moment:.0f} s after the kill (answers: "
                    f"{dict(self.refused)}, the last: {self.last_refusal})"
                )
            time.sleep(0.01)

    def check(self, killed: float) -> dict[str, int]:
        """Writes acknowledged before the kill, and how many of them the tenant lacks now."""
        before = {n for sent, answered, n in self.acked if answered < killed}
        r = self.http.post(f"/v1/tenants/{self.tenant}/query", json={"sql": "SELECT n FROM probe"})
        if r.status_code != 200:
            raise BenchError(f"probe read after the failover: {r.status_code} {r.text}")
        present = {row[0] for row in r.json()["rows"]}
        return {"acked_before_kill": len(before), "lost": len(before - present)}


class Timeline:
    """When n1 saw what, after the kill: n2's lease lost (its registration gone), and every slot
    served again without n2 (its slots claimed by n1), polled from a thread (wall clock); with
    n1's log lines that start and end the takeover, the failover time split into its phases."""

    def __init__(self, cluster: Cluster, url: str) -> None:
        self.http = _admin(cluster, url)
        self.http.timeout = httpx.Timeout(PROBE_TIMEOUT)
        self.lease_lost: float | None = None
        self.owned: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="bench-timeline", daemon=True)

    def __enter__(self) -> Timeline:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(PROBE_TIMEOUT * 2)
        self.http.close()

    def start(self) -> None:
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set() and self.owned is None:
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                status = self.http.get("/v1/admin/cluster").json()
                n2 = status["nodes"].get("n2")
                if self.lease_lost is None and (n2 is None or n2["state"] != "live"):
                    self.lease_lost = time.time()
                if n2 is None and status["slots_owned"] == SLOTS:
                    self.owned = time.time()
            self._stop.wait(POLL)

    def wait_owned(self, deadline: float) -> None:
        while self.owned is None and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(POLL)

    def phases(self, killed: float, log: list[str], first_write: float) -> dict[str, float | None]:
        """Seconds of each phase (None: not seen): lease expiry (the kill to n1 seeing n2's
        registration gone), grace (to the takeover's start), takeover (fence, read, manifests),
        claim (the takeover's end to every slot served again: assign, claims, routing), first
        write (to the probe's first acknowledged write: proxy, restore on first access, the
        client's retry); they add up to the failover time."""
        started = _logged_at(log, "taking over node n2")
        done = _logged_at(log, "took over node n2 in")
        marks = [killed, self.lease_lost, started, done, self.owned, first_write]
        names = ["lease_expiry_s", "grace_s", "takeover_s", "claim_s", "first_write_s"]
        return {
            name: None if a is None or b is None else round(b - a, 2)
            for name, a, b in zip(names, marks[:-1], marks[1:], strict=True)
        }


def _logged_at(log: list[str], text: str) -> float | None:
    """The wall-clock time of the last log line holding `text` (text log format), or None."""
    for line in reversed(log):
        if text in line:
            with contextlib.suppress(ValueError):
                stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
                return stamp.timestamp()  # the server's local time, as ours
    return None


def _first_access(driver: Driver, ids: list[str], tokens: list[str], concurrency: int) -> dict[str, Any]:
    """Query every tenant once through the driver's node (with its own token); 503s (still
    restoring) again. Other answers are failures: counted, the first few kept."""
    requests = driver.query_requests(ids, tokens, 10)
    pending, rounds = list(range(len(ids))), 0
    statuses: dict[str, int] = {}
    failures: list[dict[str, Any]] = []
    started = time.monotonic()
    while pending:
        rounds += 1
        result = driver.run(
            f"first-access-{rounds}",
            [requests[i] for i in pending],
            len(pending),
            concurrency,
            keep_responses=True,
        )
        for status, n in result.statuses.items():
            statuses[str(status)] = statuses.get(str(status), 0) + n
        answers = [(i, result.responses.get(p, (0, b""))) for p, i in enumerate(pending)]
        failures += [
            {"tenant": ids[i], "status": status, "answer": body[:300].decode(errors="replace")}
            for i, (status, body) in answers
            if status not in (0, 200, 503)
        ]
        # a position never sent (the time budget ran out) counts as not answered
        pending = [i for i, (status, _) in answers if status in (0, 503)]
        if pending:
            time.sleep(0.2)
    elapsed = time.monotonic() - started
    return {
        "tenants": len(ids),
        "seconds": round(elapsed, 2),
        "tenants_per_s": round(len(ids) / elapsed, 1) if elapsed else 0.0,
        "rounds": rounds,
        "statuses": statuses,
        "failed": len(failures),
        "failures": failures[:5],
    }


def failover_rows(r: dict[str, Any]) -> list[Row]:
    probe, restore, ack = r["probe"], r["restore"], r["ack"]
    target = r["failover_target_s"]
    settings = (
        f"lease TTL {r['lease_ttl_s']} s, takeover grace {r['takeover_grace_s']:g} s, "
        f"catalog upload every {CATALOG_UPLOAD_INTERVAL:g} s"
    )
    phases = r["phases"]
    split = ", ".join(
        f"{name.removesuffix('_s').replace('_', ' ')} {'?' if s is None else f'{s:g}'}"
        for name, s in phases.items()
    )
    return [
        ("settings", settings, "", None),
        (
            "kill -9 of an owner -> first write of its tenant through another node",
            f"{r['failover_s']} s",
            f"<= {target:g} s (TTL + grace + {SLACK:g})",
            r["failover_s"] <= target,
        ),
        ("  where it went (s)", split, "", None),
        (
            "probe writes acknowledged before the kill / lost",
            f"{probe['acked_before_kill']} / {probe['lost']}",
            "",
            None,
        ),
        (
            "first access of the dead node's tenants (restored)",
            f"{restore['tenants']:,} in {restore['seconds']} s ({restore['tenants_per_s']:,}/s)",
            "",
            None,
        ),
        ("dead node's tenants not served after it", f"{restore['failed']:,}", "0", restore["failed"] == 0),
        (
            "ack=replica vs local: writes/s",
            f"{ack['replica']['writes_per_s']:,.0f} vs {ack['local']['writes_per_s']:,.0f} "
            f"({ack['throughput_ratio']}x)",
            "",
            None,
        ),
        (
            "ack=replica vs local: latency p50 / p99",
            f"{ack['replica']['latency_ms']['p50']} / {ack['replica']['latency_ms']['p99']} ms vs "
            f"{ack['local']['latency_ms']['p50']} / {ack['local']['latency_ms']['p99']} ms",
            "",
            None,
        ),
    ]
