"""Fleet rollout: template first, then every tenant, with failures isolated, stop and resume,
canary, dry run, max_failures, and requests served correctly while it runs."""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from schema_sync.catch_up import SchemaHooks
from schema_sync.errors import InvalidMigration, RolloutConflict, RolloutNotFound
from schema_sync.groups import GroupStore
from schema_sync.migrations import RECORD_TABLE
from schema_sync.rollout import ABORTED, COMPLETED, STOPPED, Rollout, RolloutOptions
from schema_sync.rollouts import Rollouts
from schema_sync.session import SchemaSession
from tenants.errors import SqlfleetError
from tenants.fleet import Fleet
from tests.support.schema import TEST_CONFIG, TEST_POOL, SchemaFleet

ITEMS = (
    "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL); INSERT INTO items VALUES (1, 'seed');"
)
# schema change + data migration + an index that the "bad" tenants' data cannot take
MIGRATION = (
    "ALTER TABLE items ADD COLUMN price REAL NOT NULL DEFAULT 0;"
    "UPDATE items SET price = id * 2;"
    "CREATE UNIQUE INDEX items_name ON items(name);"
)


def seed(sf: SchemaFleet, n: int, bad_every: int = 0) -> tuple[list[str], set[str]]:
    """`n` tenants of group shop; every `bad_every`-th holds a duplicate name."""
    sf.groups.create("shop", ITEMS)
    tenants = [f"t{i:04d}" for i in range(n)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda t: sf.fleet.create(t, "shop"), tenants))
    bad = set(tenants[::bad_every]) if bad_every else set()
    for tenant in bad:
        sf.query(tenant, "INSERT INTO items VALUES (2, 'seed')")
    sf.groups.add_migration("shop", "price", MIGRATION)
    return tenants, bad


def wait(rollout: Rollout, until: Any = None, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snap = rollout.snapshot()
        if snap["state"] != "running" or (until is not None and until(snap)):
            return snap
        time.sleep(0.01)
    raise AssertionError(f"rollout still running after {timeout}s: {rollout.snapshot()}")


def migrated(sf: SchemaFleet, tenant: str) -> bool:
    return bool(sf.query(tenant, f"SELECT count(*) FROM {RECORD_TABLE}")[0][0])


class Requests:
    """Tenant traffic during a rollout: each thread owns its tenants, so it knows the answers."""

    def __init__(self, sf: SchemaFleet, tenants: list[str], threads: int = 2) -> None:
        self.sf = sf
        self.stop = threading.Event()
        self.rows = {t: 1 for t in tenants}
        self.answered = 0
        self.errors: list[str] = []
        shares = [tenants[i::threads] for i in range(threads)]
        self.threads = [threading.Thread(target=self._run, args=(share, i)) for i, share in enumerate(shares)]
        for thread in self.threads:
            thread.start()

    def _run(self, tenants: list[str], seed_: int) -> None:
        rng = random.Random(seed_)
        for k in range(100_000):
            if self.stop.is_set():
                return
            tenant = rng.choice(tenants)
            try:
                self.sf.query(tenant, f"INSERT INTO items(name) VALUES ('req-{seed_}-{k}')")
                self.rows[tenant] += 1
                count = self.sf.query(tenant, "SELECT count(*) FROM items WHERE name != 'seed' OR id = 1")
                if count != [(self.rows[tenant],)]:
                    self.errors.append(f"{tenant}: {count} != {self.rows[tenant]}")
                self.answered += 1
            except Exception as exc:
                self.errors.append(f"{tenant}: {exc!r}")

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)


def test_rollout_over_1000_tenants_stops_and_resumes(schema_fleet: SchemaFleet) -> None:
    sf = schema_fleet
    tenants, bad = seed(sf, 1000, bad_every=97)
    good = [t for t in tenants if t not in bad]
    traffic = Requests(sf, good[:40])
    try:
        first = sf.rollouts.start("shop", RolloutOptions(concurrency=4))
        snap = wait(first, until=lambda s: s["done"] + s["failed"] >= 300)
        answer = sf.rollouts.stop("shop", first.id)  # the state it leaves, never "running"
        assert answer["state"] in ("stopping", STOPPED), answer
        assert first.wait(30)
        snap = first.snapshot()
        assert snap["state"] == STOPPED and snap["reason"] == "stopped by the operator"
        assert snap["template"]["applied"] == ["0001_price"]
        assert 300 <= snap["done"] + snap["failed"] < 1000 and snap["remaining"] > 0
        running = sf.rollouts.start("shop", RolloutOptions(concurrency=4))
        with pytest.raises(RolloutConflict):  # one rollout per group at a time
            sf.rollouts.start("shop", RolloutOptions())
        final = wait(running)
    finally:
        traffic.finish()
    assert traffic.errors == []
    assert traffic.answered > 0
    assert final["state"] == COMPLETED
    assert final["total"] == 1000 and final["remaining"] == 0
    # the first run's work is kept (per-tenant state lives in the tenant)
    assert final["current"] >= snap["migrated"]
    assert final["migrated"] + final["current"] == len(good)
    assert final["failed"] == len(bad)
    assert {f["tenant"] for f in final["failures"]} == bad
    assert all("UNIQUE constraint failed" in f["error"] for f in final["failures"])
    for tenant in bad:  # rolled back: not a trace of the migration
        assert not migrated(sf, tenant)
        assert sf.query(tenant, "SELECT count(*) FROM pragma_table_info('items')") == [(2,)]
    for tenant in random.Random(1).sample(good, 50) + good[:40]:
        assert migrated(sf, tenant)
        assert sf.query(tenant, "SELECT price FROM items WHERE id = 1") == [(2.0,)]
        assert sf.query(tenant, "SELECT count(*) FROM items") == [(traffic.rows.get(tenant, 1),)]
    assert sf.rollouts.status("shop", first.id)["state"] == STOPPED
    assert [h["id"] for h in sf.rollouts.history("shop")][:2] == sorted([running.id, first.id], reverse=True)


def test_canary_migrates_exactly_n_and_releases_nothing(schema_fleet: SchemaFleet) -> None:
    sf = schema_fleet
    tenants, _ = seed(sf, 30)
    snap = wait(sf.rollouts.start("shop", RolloutOptions(canary=5, concurrency=4)))
    assert snap["state"] == STOPPED and snap["reason"] == "canary of 5 tenants done"
    assert snap["migrated"] == 5 and snap["template"] == {"applied": ["0001_price"], "tried_only": True}
    assert sum(migrated(sf, t) for t in tenants) == 5  # lazy catch-up did not spread it
    assert sf.groups.get("shop").state().head == 0
    # the full rollout then takes the rest, canaries included as current
    snap = wait(sf.rollouts.start("shop", RolloutOptions()))
    assert (snap["state"], snap["migrated"], snap["current"]) == (COMPLETED, 25, 5)
    assert sf.groups.get("shop").state().head == 1


def test_dry_run_changes_nothing_and_reports_failures(schema_fleet: SchemaFleet) -> None:
    sf = schema_fleet
    tenants, bad = seed(sf, 20, bad_every=7)
    sf.groups.add_sync(
        "shop",
        "strict_names",
        "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL, "
        "price REAL NOT NULL DEFAULT 0, note TEXT); CREATE UNIQUE INDEX items_name ON items(name);",
    )
    snap = wait(sf.rollouts.start("shop", RolloutOptions(dry_run=True)))
    assert snap["state"] == COMPLETED
    assert snap["migrated"] == 20 - len(bad) and snap["failed"] == len(bad)
    assert snap["template"] == {"applied": ["0001_price", "0002_strict_names"], "tried_only": True}
    (plan,) = snap["plans"]
    assert 'ALTER TABLE "items" ADD COLUMN note TEXT' in plan["sql"] and plan["tenants"] == 20 - len(bad)
    assert not any(migrated(sf, t) for t in tenants)
    assert sf.groups.get("shop").state().head == 0


def test_max_failures_stops_the_rollout(schema_fleet: SchemaFleet) -> None:
    sf = schema_fleet
    seed(sf, 40, bad_every=2)
    snap = wait(sf.rollouts.start("shop", RolloutOptions(max_failures=3, concurrency=1)))
    assert snap["state"] == STOPPED and snap["failed"] == 3
    assert snap["reason"] == "stopped after 3 failures (max_failures 3)"
    assert snap["remaining"] > 0


def test_disagreeing_histories_are_reported_not_skipped(schema_fleet: SchemaFleet) -> None:
    sf = schema_fleet
    seed(sf, 6)
    # a tenant whose record names a migration the group does not have (written by the server:
    # tenant SQL cannot write the record)
    with sf.fleet.lease("t0001") as handle:
        assert handle.conn is not None
        SchemaSession(handle.conn, handle.sandbox, 5.0).internal(
            f"INSERT INTO {RECORD_TABLE} VALUES ('0001_other', 'x', '2020-01-01T00:00:00Z')"
        )
    snap = wait(sf.rollouts.start("shop", RolloutOptions()))
    assert (snap["migrated"], snap["failed"]) == (5, 1)
    (failure,) = snap["failures"]
    assert failure["tenant"] == "t0001" and failure["code"] == "migration_history_mismatch"
    assert "applied 0001_other where the group has 0001_price" in failure["error"]

    # a migration edited on disk after it was released: the next rollout refuses to start
    path = sf.groups.get("shop").migrations_dir / "0001_price.sql"
    path.write_text(path.read_text() + "\n-- edited")
    snap = wait(sf.rollouts.start("shop", RolloutOptions()))
    assert snap["state"] == "failed" and snap["total"] == 0
    assert "0001_price was edited after it was applied" in snap["reason"]


def smallest_input(sf: SchemaFleet) -> None:
    """Issue 13's input: group g, tenants a (fails: it has `price` already) and b (open)."""
    sf.groups.create("g", "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT);")
    for tenant in ("a", "b", "c"):
        sf.fleet.create(tenant, "g")
    sf.query("b", "INSERT INTO items(name) VALUES ('open')")  # b is open in the pool
    sf.groups.add_migration("g", "price", "ALTER TABLE items ADD COLUMN price REAL")
    sf.query("a", "ALTER TABLE items ADD COLUMN price REAL")


def test_a_stopped_rollout_releases_nothing_until_it_is_resumed(schema_fleet: SchemaFleet) -> None:
    sf = schema_fleet
    smallest_input(sf)
    snap = wait(sf.rollouts.start("g", RolloutOptions(max_failures=1, concurrency=1)))
    assert (snap["state"], snap["failed"], snap["migrated"]) == (STOPPED, 1, 0)
    assert snap["template"] == {"applied": ["0001_price"], "tried_only": True}
    # paused: the head stays where it was, so neither an open tenant nor one opened now takes it
    assert sf.groups.get("g").state().head == 0
    with pytest.raises(SqlfleetError, match="no such column: price"):
        sf.query("b", "SELECT price FROM items")
    sf.fleet.pool.discard("c")
    with pytest.raises(SqlfleetError, match="no such column: price"):
        sf.query("c", "SELECT price FROM items")
    sf.fleet.create("d", "g")  # a new tenant starts at the released head too
    with pytest.raises(SqlfleetError, match="no such column: price"):
        sf.query("d", "SELECT price FROM items")

    sf.query("a", "ALTER TABLE items DROP COLUMN price")  # the operator fixes a, then resumes
    resumed = sf.rollouts.resume("g", snap["id"])
    assert resumed.id == snap["id"]
    final = wait(resumed)
    assert (final["state"], final["resumed"], final["failed"]) == (COMPLETED, 1, 0)
    assert (final["total"], final["migrated"], final["remaining"]) == (3, 3, 0)
    assert final["template"] == {"applied": ["0001_price"], "tried_only": False}
    assert sf.groups.get("g").state().head == 1
    for tenant in ("a", "b", "c", "d"):  # b without being reopened; d by catch-up
        assert sf.query(tenant, "SELECT count(*) FROM pragma_table_info('items') WHERE name = 'price'") == [
            (1,)
        ]
    with pytest.raises(RolloutConflict, match="completed"):
        sf.rollouts.resume("g", snap["id"])


def test_abort_keeps_the_released_head_and_reports_the_tenants_ahead(schema_fleet: SchemaFleet) -> None:
    sf = schema_fleet
    sf.groups.create("g", "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT);")
    for tenant in ("a", "b", "c"):
        sf.fleet.create(tenant, "g")
    sf.query("b", "ALTER TABLE items ADD COLUMN price REAL")
    sf.groups.add_migration("g", "price", "ALTER TABLE items ADD COLUMN price REAL")
    snap = wait(sf.rollouts.start("g", RolloutOptions(max_failures=1, concurrency=1)))
    assert (snap["state"], snap["migrated"], snap["failed"]) == (STOPPED, 1, 1)
    assert snap["migrated_tenants"] == ["a"]

    aborted = sf.rollouts.abort("g", snap["id"])
    assert aborted["state"] == ABORTED and aborted["reason"] == "aborted by the operator"
    assert aborted["migrated_tenants"] == ["a"] and aborted["migrated"] == 1
    assert sf.rollouts.status("g", snap["id"])["state"] == ABORTED
    assert sf.groups.get("g").state().head == 0
    # a keeps the migration (no down migrations), c does not get it
    assert migrated(sf, "a")
    sf.fleet.pool.discard("c")
    assert not migrated(sf, "c")
    with pytest.raises(RolloutConflict, match="aborted"):
        sf.rollouts.resume("g", snap["id"])
    with pytest.raises(RolloutConflict, match="aborted"):
        sf.rollouts.abort("g", snap["id"])
    # the next rollout takes the rest: a counts as current
    sf.query("b", "ALTER TABLE items DROP COLUMN price")
    final = wait(sf.rollouts.start("g", RolloutOptions()))
    assert (final["state"], final["migrated"], final["current"]) == (COMPLETED, 2, 1)


def test_a_running_rollout_can_be_aborted(schema_fleet: SchemaFleet) -> None:
    sf = schema_fleet
    seed(sf, 200)
    rollout = sf.rollouts.start("shop", RolloutOptions(concurrency=1))
    wait(rollout, until=lambda s: s["done"] >= 5)
    aborted = sf.rollouts.abort("shop", rollout.id)
    assert aborted["state"] == ABORTED and 5 <= aborted["migrated"] < 200
    assert len(aborted["migrated_tenants"]) == aborted["migrated"]
    assert sf.groups.get("shop").state().head == 0


def test_a_rollout_interrupted_by_a_restart_resumes_from_its_file(schema_fleet: SchemaFleet) -> None:
    sf = schema_fleet
    smallest_input(sf)
    first = sf.rollouts.start("g", RolloutOptions(max_failures=1, concurrency=1))
    assert first.wait(30) and first.snapshot()["state"] == STOPPED
    sf.query("a", "ALTER TABLE items DROP COLUMN price")
    restarted = Rollouts(sf.groups, sf.fleet, concurrency=2)  # a new server: nothing live
    try:
        assert restarted.status("g", first.id)["state"] == STOPPED
        final = wait(restarted.resume("g", first.id))
        assert (final["state"], final["migrated"], final["failed"], final["resumed"]) == (COMPLETED, 3, 0, 1)
        assert final["options"]["max_failures"] == 1
        assert sf.groups.get("g").state().head == 1
    finally:
        restarted.close()


def test_resume_takes_new_limits_and_only_the_newest_rollout(schema_fleet: SchemaFleet) -> None:
    sf = schema_fleet
    seed(sf, 20, bad_every=5)
    first = wait(sf.rollouts.start("shop", RolloutOptions(max_failures=1, concurrency=1)))
    assert first["state"] == STOPPED
    resumed = wait(sf.rollouts.resume("shop", first["id"], max_failures=10))
    assert (resumed["state"], resumed["failed"], resumed["options"]["max_failures"]) == (COMPLETED, 4, 10)
    assert resumed["migrated"] == 16 and resumed["remaining"] == 0
    dry = wait(sf.rollouts.start("shop", RolloutOptions(dry_run=True)))
    assert dry["dry_run"] is True
    with pytest.raises(RolloutConflict, match="completed"):
        sf.rollouts.resume("shop", dry["id"])
    with pytest.raises(RolloutNotFound):
        sf.rollouts.resume("shop", "20200101T000000-000000")


def test_a_rollout_leaves_the_pool_to_the_tenants_in_use(tmp_path: Path) -> None:
    groups = GroupStore(tmp_path / "data", timeout=5.0)
    made: list[SchemaHooks] = []

    def hooks(fleet: Fleet) -> list[SchemaHooks]:
        made.append(SchemaHooks(groups, fleet.group_of, lazy_catch_up=True, timeout=5.0))
        return made

    fleet = Fleet(tmp_path / "data", TEST_CONFIG, dataclasses.replace(TEST_POOL, capacity=4), hooks)
    sf = SchemaFleet(fleet, groups, made[0], Rollouts(groups, fleet, concurrency=4))
    try:
        tenants, _ = seed(sf, 40)
        hot = tenants[:4]
        for tenant in hot:
            sf.query(tenant, "SELECT 1")
        snap = wait(sf.rollouts.start("shop", RolloutOptions()))
        assert (snap["state"], snap["migrated"]) == (COMPLETED, 40)
        assert all(fleet.pool.is_open(t) for t in hot) and len(fleet.pool) == 4
        assert all(migrated(sf, t) for t in tenants)
    finally:
        sf.rollouts.close()
        fleet.close()


def test_a_rerun_counts_the_tenants_an_earlier_run_migrated_as_migrated(schema_fleet: SchemaFleet) -> None:
    """A part of a fleet-wide rollout run again (its node gained slots): the tenants migrated
    since the rollout began count as migrated, not current, so each counts once as migrated."""
    sf = schema_fleet
    tenants, _ = seed(sf, 6)
    group = sf.groups.get("shop")

    def part(since: float | None, wanted: set[str]) -> dict[str, Any]:
        rollout = Rollout(
            "r",
            group,
            RolloutOptions(concurrency=2),
            store=sf.groups,
            fleet=sf.fleet,
            releases=False,
            wanted=wanted.__contains__,
            since=since,
        )
        rollout.start()
        return wait(rollout)

    began = time.time() - 1
    first = part(began, set(tenants[:3]))  # one node's part, then it gains the others
    assert (first["state"], first["migrated"], first["current"]) == (COMPLETED, 3, 0)
    again = part(began, set(tenants))
    assert (again["migrated"], again["current"], again["total"]) == (6, 0, 6)
    # a later rollout (began after these migrations) finds them current
    later = part(time.time() + 1, set(tenants))
    assert (later["migrated"], later["current"]) == (0, 6)
    assert sf.groups.get("shop").state().head == 0  # parts release nothing


def test_an_empty_migration_or_a_name_the_group_has_is_refused(schema_fleet: SchemaFleet) -> None:
    groups = schema_fleet.groups
    groups.create("shop", ITEMS)
    groups.add_migration("shop", "price", "ALTER TABLE items ADD COLUMN price REAL")
    for text in ("", "  \n", "-- nothing yet\n/* later */", ";\n;"):
        with pytest.raises(InvalidMigration, match="no SQL statement"):
            groups.add_migration("shop", "later", text)
        with pytest.raises(InvalidMigration, match="no SQL statement"):
            groups.try_migration("shop", "later", ".sql", text)
        for allow_drop in (False, True):  # a blank sync step would drop every table
            with pytest.raises(InvalidMigration, match="sync step's schema has no SQL statement"):
                groups.add_sync("shop", "resync", text, allow_drop)
            with pytest.raises(InvalidMigration, match="sync step's schema has no SQL statement"):
                groups.try_migration("shop", "resync", ".sync.sql", groups.sync_text(text, allow_drop))
    for name in ("price", "0007_price"):
        with pytest.raises(InvalidMigration, match=r"already has a migration named 'price' \(0001_price\)"):
            groups.add_migration("shop", name, "CREATE TABLE other (x)")
    with pytest.raises(InvalidMigration, match="already has a migration named 'price'"):
        groups.add_sync("shop", "price", "CREATE TABLE items(id INTEGER PRIMARY KEY)")
    assert [m.name for m in groups.get("shop").state(fresh=True).migrations] == ["0001_price"]
    # a file another node registered is taken as it is (it was checked there)
    groups.put_migration("shop", "0002_price.sql", "SELECT 1;")
    assert [m.name for m in groups.get("shop").state(fresh=True).migrations] == ["0001_price", "0002_price"]
