"""`sqlfleet bench migrate`: rollout throughput, ADD COLUMN + CREATE INDEX over small tenants.

The rollout runs in-process over a fresh data dir: the same Fleet, pool, GroupStore and Rollouts
the server wires (HTTP is not on a rollout's path: one POST starts it). Seeding N tenants through
the admin API would take longer than the rollout itself (each create is several fsyncs), so the
tenants are seeded offline: one WAL-mode tenant file copied N times, and the catalog rows written
in one transaction. Then a migration is registered and rolled out; the rate counts tenants
migrated per second of rollout, template step included. Backups (WAL shipping) are not wired.

The floor (`--floor`, on by default) is the same work done with bare APSW on an identical set
of tenant files in the same run, at the same concurrency: open with the pragmas a tenant needs
(exclusive WAL, `synchronous`, no checkpoint on close), read the record, one transaction with
the migration and its record row, close. No server code: what is left between the rollout and
the floor is ours; the floor itself is SQLite and the kernel (file creation, fsyncs).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import apsw
import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ops.bench.floor import in_threads
from ops.bench.options import count, data_dir_option, json_out_option
from ops.bench.profile import profile_options, profiling
from ops.bench.report import Row, emit
from ops.process import scratch_dir
from ops.settings import Settings
from schema_sync.catch_up import SchemaHooks
from schema_sync.groups import GroupStore
from schema_sync.migrations import RECORD_TABLE, checksum
from schema_sync.rollout import RUNNING, Rollout, RolloutOptions
from schema_sync.rollouts import Rollouts
from tenants.catalog import Catalog
from tenants.connection import open_database
from tenants.execute import Statement
from tenants.fleet import Fleet
from tenants.layout import Layout
from tenants.rfc3339 import format_time
from tenants.state import TenantState

TARGET_PER_S = 2000.0  # issue 14
GROUP = "bench"
SCHEMA = (
    "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL, qty INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX items_name ON items(name);"
)
MIGRATION = (
    "ALTER TABLE items ADD COLUMN price REAL NOT NULL DEFAULT 0;CREATE INDEX items_qty ON items(qty, price);"
)


@click.command("migrate")
@count("--tenants", 10_000, maximum=1_000_000)
@count("--rows", 20, "Rows per tenant.", minimum=0, maximum=100_000)
@count(
    "--concurrency",
    Settings.load({}).rollout_concurrency,
    "Tenants migrated at once (the server's rollout_concurrency).",
    maximum=256,
)
@click.option("--synchronous", type=click.Choice(["FULL", "NORMAL"]), default="FULL", show_default=True)
@count("--pool-capacity", 1000)
@data_dir_option("Where to build the fleet, kept afterwards [default: a temp dir, removed].")
@json_out_option("migrate")
@click.option(
    "--floor/--no-floor",
    default=True,
    show_default=True,
    help="Also migrate an identical set of tenant files with bare APSW, same run, same concurrency.",
)
@profile_options("Record this process (the rollout runs in it) with py-spy during the rollout.")
def bench_migrate(
    tenants: int,
    rows: int,
    concurrency: int,
    synchronous: str,
    pool_capacity: int,
    data_dir: Path | None,
    json_out: Path | None,
    floor: bool,
    profile: Path | None,
    profile_mode: str,
) -> None:
    """Roll ADD COLUMN + CREATE INDEX out to N small tenants; report tenants/s."""
    with _data_dir(data_dir) as root:
        started = time.perf_counter()
        settings = Settings.load(environ={}, synchronous=synchronous, pool_capacity=pool_capacity)
        floor_files = seed(root, tenants, rows, settings, floor=floor)
        seed_s = time.perf_counter() - started
        click.echo(f"seeded {tenants} tenants in {seed_s:.1f}s")
        with profiling(os.getpid(), profile, profile_mode):
            snap, checked = _rollout(root, settings, concurrency)
        bare = migrate_bare(floor_files, concurrency, synchronous) if floor else None
    rate = snap["migrated"] / max(snap["elapsed_s"], 1e-9)
    result: dict[str, Any] = {
        "bench": "migrate",
        "tenants": tenants,
        "rows_per_tenant": rows,
        "concurrency": concurrency,
        "synchronous": synchronous,
        "seed_s": round(seed_s, 2),
        "rollout": {k: v for k, v in snap.items() if k not in ("failures", "plans")},
        "tenants_per_s": round(rate, 1),
        "verified_tenants": checked,
    }
    all_migrated = snap["migrated"] == tenants and snap["failed"] == 0
    table: list[Row] = [
        ("tenants", str(tenants), "", None),
        ("migrated / failed", f"{snap['migrated']} / {snap['failed']}", "all / 0", all_migrated),
        ("rollout time", f"{snap['elapsed_s']:.1f} s", "", None),
        ("CPU per tenant", f"{snap['cpu_s'] / max(tenants, 1) * 1000:.2f} ms", "", None),
        ("throughput", f"{rate:,.0f} tenants/s", f">= {TARGET_PER_S:,.0f}", rate >= TARGET_PER_S),
    ]
    if bare is not None:
        result["floor"] = bare
        result["rollout_vs_floor"] = round(result["tenants_per_s"] / max(bare["tenants_per_s"], 1e-9), 3)
        table += [
            ("floor: bare APSW", f"{bare['tenants_per_s']:,.0f} tenants/s", "", None),
            ("floor: CPU per tenant", f"{bare['cpu_ms_per_tenant']:.2f} ms", "", None),
            ("rollout / floor", f"{result['rollout_vs_floor']:.2f}", "", None),
        ]
    emit(result, table, json_out or Path.cwd() / "bench-migrate.json")


@contextlib.contextmanager
def _data_dir(given: Path | None) -> Iterator[Path]:
    if given is not None:
        if given.exists() and any(given.iterdir()):
            raise click.UsageError(f"--data-dir {given} is not empty")
        given.mkdir(parents=True, exist_ok=True)
        yield given
        return
    with scratch_dir("sqlfleet-bench-migrate-") as root:
        yield root


def tenant_ids(count: int) -> list[str]:
    return [f"t{i:07d}" for i in range(count)]


def seed(root: Path, count: int, rows: int, settings: Settings, floor: bool = False) -> list[Path]:
    """A group and `count` tenants of it, each a copy of one small WAL-mode database; with
    `floor`, as many copies again under DATA/floor (no tenants of the server's: the floor's
    files, spread over folders as tenants are), returned."""
    GroupStore(root, settings.migration_timeout).create(GROUP, SCHEMA)
    layout = Layout(root)
    layout.ensure()
    sample = root / "seed.db"
    shutil.copyfile(root / "groups" / GROUP / "template.db", sample)
    conn, _ = open_database(sample, settings.db_config())  # switches the copy to WAL, as Fleet.create does
    try:
        conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
            "INSERT INTO items(name, qty) SELECT 'item-' || i, i FROM n",
            (rows,),
        ).fetchall()
        conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
    finally:
        conn.close()
    Path(f"{sample}-wal").unlink(missing_ok=True)
    ids = tenant_ids(count)

    def place(tenant: str) -> None:
        path = layout.tenant_path(tenant)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sample, path)

    floor_layout = Layout(root / "floor")
    floor_files = [floor_layout.tenant_path(tenant) for tenant in ids] if floor else []

    def place_floor(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sample, path)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(place, ids))
        list(pool.map(place_floor, floor_files))
    sample.unlink()
    _bulk_catalog(layout, ids)
    return floor_files


def _bulk_catalog(layout: Layout, ids: list[str]) -> None:
    """Catalog rows for `ids`, in one transaction. Catalog.insert is one durable transaction per
    row (a create's contract); seeding 100k that way would take minutes, so this one bench-only
    path writes the rows itself and checks the table still has the columns it writes."""
    Catalog(layout.catalog_path).close()  # creates the schema
    db = apsw.Connection(str(layout.catalog_path))
    try:
        columns = {str(r[1]) for r in db.execute("PRAGMA table_info(tenants)")}
        if not {"id", "created_at", "state", "grp"} <= columns:
            raise click.ClickException(
                f"the tenant catalog changed shape ({sorted(columns)}): update the bench"
            )
        now = time.time()
        with db:
            db.executemany(
                "INSERT INTO tenants(id, created_at, state, grp) VALUES (?, ?, ?, ?)",
                ((tenant, now, TenantState.ACTIVE, GROUP) for tenant in ids),
            )
    finally:
        db.close()


def _rollout(root: Path, settings: Settings, concurrency: int) -> tuple[dict[str, Any], int]:
    groups = GroupStore(root, settings.migration_timeout)

    def hooks(fleet: Fleet) -> list[SchemaHooks]:
        return [SchemaHooks(groups, fleet.group_of, lazy_catch_up=True, timeout=settings.migration_timeout)]

    fleet = Fleet(root, settings.db_config(), settings.pool_config(), hooks)
    try:
        groups.add_migration(GROUP, "price", MIGRATION)
        rollouts = Rollouts(groups, fleet, concurrency)
        cpu = time.process_time()
        try:
            snap = _watch(rollouts.start(GROUP, RolloutOptions(concurrency=concurrency)))
        finally:
            rollouts.close()
        # CPU per tenant does not depend on what else the machine runs; the rate does
        snap["cpu_s"] = round(time.process_time() - cpu, 2)
        return snap, _verify(fleet, snap["total"])
    finally:
        fleet.close()


def migrate_bare(paths: Sequence[Path], concurrency: int, synchronous: str) -> dict[str, Any]:
    """The floor: MIGRATION on each of `paths` with bare APSW, `concurrency` at once."""
    record = ("0001_price", checksum(MIGRATION), format_time(time.time()))
    work = f"BEGIN IMMEDIATE; {MIGRATION} INSERT INTO main.{RECORD_TABLE} VALUES (?, ?, ?); COMMIT"

    def one(path: Path) -> None:
        conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READWRITE)
        try:
            conn.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
            conn.execute(
                f"PRAGMA locking_mode=EXCLUSIVE; PRAGMA journal_mode=WAL; PRAGMA synchronous={synchronous}"
            ).fetchall()
            if conn.execute(f"SELECT name FROM main.{RECORD_TABLE}").fetchall():
                raise click.ClickException(f"{path} is migrated already")
            conn.execute(work, record).fetchall()
        finally:
            conn.close()

    elapsed, cpu = in_threads(one, paths, concurrency)
    return {
        "tenants": len(paths),
        "elapsed_s": round(elapsed, 3),
        "tenants_per_s": round(len(paths) / max(elapsed, 1e-9), 1),
        "cpu_ms_per_tenant": round(cpu / max(len(paths), 1) * 1000, 3),
    }


def _watch(rollout: Rollout) -> dict[str, Any]:
    rate = TextColumn("{task.fields[rate]}")
    with Progress(
        TextColumn("migrate"), BarColumn(), MofNCompleteColumn(), rate, TimeRemainingColumn()
    ) as progress:
        task = progress.add_task("rollout", total=None, rate="")
        while True:
            snap = rollout.snapshot()
            handled = snap["done"] + snap["failed"]
            speed = f"{snap['rate_per_s']:,.0f}/s  failed {snap['failed']}"
            progress.update(task, total=snap["total"] or None, completed=handled, rate=speed)
            if snap["state"] != RUNNING:
                return snap
            time.sleep(0.2)


def _verify(fleet: Fleet, total: int) -> int:
    """Every 97th tenant must have the new column and index; returns how many were checked."""
    checked = 0
    for tenant in tenant_ids(total)[::97]:
        result = fleet.execute(tenant, Statement("SELECT count(*) FROM pragma_index_list('items')"))
        column = fleet.execute(tenant, Statement("SELECT count(*) FROM pragma_table_info('items')"))
        if result.rows != [(2,)] or column.rows != [(4,)]:
            raise click.ClickException(f"tenant {tenant} was not migrated: {result.rows} {column.rows}")
        checked += 1
    return checked
