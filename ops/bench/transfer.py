"""`sqlfleet bench transfer`: data in and out of one large tenant.

Phases, each with the server's peak RSS (ops.bench.footprint) against its RSS when idle before
it: `export` (GET /export through the admin client, to a file), `backup` (`sqlite3 FILE
".backup COPY"` of the exported file: what SQLite itself does with the same bytes, the yardstick),
`import` (PUT /import of that file as a new tenant), then `feed` (ops.bench.feed: the change
feed's commit-to-event latency with `--subscribers` streams). Targets: export and import at least
half the MB/s of `.backup`, peak RSS at most 64 MiB above idle, feed p99 at most 50 ms.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from ops.bench.feed import feed_phase, feed_rows
from ops.bench.footprint import Footprint
from ops.bench.options import (
    count,
    data_dir_option,
    json_out_option,
    serve_arg_option,
    serve_args,
    timeout_option,
)
from ops.bench.report import Row, emit, json_out
from ops.bench.server import BenchServer, running_server
from ops.client import AdminClient
from tenants.errors import SqlfleetError

MIB = 1 << 20
RSS_TARGET = 64 * MIB  # above idle
SPEED_TARGET = 0.5  # of sqlite3 .backup's MB/s
TENANT = "bench-transfer"
_BLOBS = (
    "INSERT INTO blobs(b) WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
    "SELECT randomblob(?) FROM n"
)


@contextmanager
def _sampled(footprint: Footprint, name: str) -> Iterator[dict[str, Any]]:
    """Ticks `footprint` every 20 ms in a thread while the block runs; yields the phase's
    result, filled in (peak RSS and all) when the block ends."""
    footprint.begin(name)
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(0.02):
            footprint.tick()

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    result: dict[str, Any] = {}
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        result.update(footprint.end())


def _fill(server: BenchServer, mb: int) -> int:
    with server.client(timeout=120) as http:
        for body in ({"id": TENANT},):
            r = http.post("/v1/admin/tenants", json=body)
            if r.status_code != 201:
                raise click.ClickException(f"creating {TENANT}: {r.text}")
        http.post(
            f"/v1/tenants/{TENANT}/query", json={"sql": "CREATE TABLE blobs(b BLOB)"}
        ).raise_for_status()
        for _ in range(mb):  # ~1 MB a statement
            r = http.post(f"/v1/tenants/{TENANT}/query", json={"sql": _BLOBS, "params": [256, 4000]})
            if r.status_code != 200:
                raise click.ClickException(f"filling {TENANT}: {r.text}")
        size: int = http.get(f"/v1/admin/tenants/{TENANT}").json()["size"]
    return size


def _rate(size: int, seconds: float) -> float:
    return round(size / MIB / seconds, 1) if seconds > 0 else 0.0


def _idle_rss(server: BenchServer) -> int:
    time.sleep(1.0)  # let the fill's buffers go
    rss: int = server.ps.memory_info().rss
    return rss


def run_transfer(
    server: BenchServer, mb: int, work: Path, subscribers: int
) -> tuple[dict[str, Any], list[Row]]:
    sqlite3 = shutil.which("sqlite3")
    if sqlite3 is None:
        raise click.ClickException("the sqlite3 CLI is needed for the .backup yardstick")
    size = _fill(server, mb)
    footprint = Footprint(server)
    exported, copy = work / "export.db", work / "backup.db"
    result: dict[str, Any] = {"bench": "transfer", "tenant_bytes": size, "phases": {}}
    with AdminClient(server.url, server.admin_key, timeout=600) as client:
        idle = _idle_rss(server)
        with _sampled(footprint, "export") as export, exported.open("wb") as out:
            started = time.perf_counter()
            client.export_tenant(TENANT, out)
            export["seconds"] = time.perf_counter() - started
        started = time.perf_counter()
        subprocess.run([sqlite3, str(exported), f".backup '{copy}'"], check=True, capture_output=True)
        backup = {"seconds": time.perf_counter() - started}
        copy.unlink()
        idle_import = _idle_rss(server)
        with _sampled(footprint, "import") as imported:
            started = time.perf_counter()
            client.import_tenant(TENANT + "-copy", exported)
            imported["seconds"] = time.perf_counter() - started
        bytes_ = exported.stat().st_size
        for phase, base in ((export, idle), (imported, idle_import)):
            phase["mb_per_s"] = _rate(bytes_, phase["seconds"])
            phase["idle_rss_bytes"] = base
            phase["rss_above_idle_bytes"] = phase["peak_rss_bytes"] - base
        backup["mb_per_s"] = _rate(bytes_, backup["seconds"])
        result["phases"] = {"export": export, "sqlite3_backup": backup, "import": imported}
        rows: list[Row] = [("tenant size", f"{bytes_ / MIB:.1f} MiB", "", None)]
        for name, phase in (("export", export), ("import", imported)):
            ratio = phase["mb_per_s"] / backup["mb_per_s"] if backup["mb_per_s"] else 0.0
            rows.append(
                (
                    f"{name} MB/s",
                    f"{phase['mb_per_s']} ({ratio:.2f}x .backup {backup['mb_per_s']})",
                    f">= {SPEED_TARGET}x",
                    ratio >= SPEED_TARGET,
                )
            )
            above = phase["rss_above_idle_bytes"]
            rows.append(
                (f"{name} peak RSS above idle", f"{above / MIB:.1f} MiB", "<= 64 MiB", above <= RSS_TARGET)
            )
    result["phases"]["feed"] = feed = feed_phase(server, subscribers)
    return result, rows + feed_rows(feed)


@click.command("transfer")
@count("--mb", 200, "Size of the tenant to export and import, MB.")
@count("--subscribers", 100, "Change feed streams of one tenant in the feed phase.", maximum=10_000)
@json_out_option("transfer")
@data_dir_option("Server data dir, kept afterwards [default: a temp dir, removed].")
@serve_arg_option("Any other `sqlfleet serve` flag, e.g. export_step_pages=4096 (repeatable).")
@timeout_option(1800.0)
def transfer(**opts: Any) -> None:
    """Export and import MB/s of one large tenant against `sqlite3 .backup` of the same file,
    and the server's peak RSS above idle while each runs."""
    work = Path(tempfile.mkdtemp(prefix="sqlfleet-bench-transfer-"))
    try:
        feed_limits = [f"changes-max-subscribers-per-tenant={opts['subscribers']}"]
        feed_limits.append(f"changes-max-subscribers={opts['subscribers']}")
        args = serve_args(None, None, [*feed_limits, *opts["serve_arg"]])
        with running_server(opts["data_dir"], args) as server:
            result, rows = run_transfer(server, opts["mb"], work, opts["subscribers"])
    except SqlfleetError as exc:
        raise click.ClickException(exc.message) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    emit(result, rows, json_out(opts, "transfer"))
