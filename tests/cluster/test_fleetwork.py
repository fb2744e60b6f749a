"""Fleet-wide schema work (issue 17): groups and rollouts through any node of a cluster of real
`sqlfleet serve` processes on one real etcd. The tests share one cluster and build on each other
(a group, its tenants, then rollouts), in file order."""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from cluster.slots import assignment
from ops import keys
from tests.support.cli import as_json, cli, ok
from tests.support.etcd import EtcdCluster, running_etcd
from tests.support.server import ServerProcess, start_server
from tests.support.waiting import wait_until

TENANTS = [f"shop-{n}" for n in range(16)]
# ~0.37 s of work per tenant here (2,000,000 rows), so a rollout is still running when a test
# acts, and a node's part of ~8 tenants is seen midway by several progress writes (0.5 s apart;
# with 400,000 rows a part could finish between two writes on a fast machine)
SLOW = (
    "CREATE TABLE {name} AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c"
    " WHERE x < {rows}) SELECT count(*) AS n FROM c"
)


@dataclass
class Fleet:
    etcd: EtcdCluster
    servers: dict[str, ServerProcess]
    common: list[str]
    root: Path
    stack: contextlib.ExitStack

    def http(self, name: str) -> httpx.Client:
        return self.servers[name].client()

    def settled(self, members: tuple[str, ...] = ("n1", "n2"), timeout: float = 90) -> None:
        expected = Counter(assignment(members).values())

        def owned() -> bool:
            with self.http("n1") as http:
                status = http.get("/v1/admin/cluster").json()
            return {n: i["slots"] for n, i in status["nodes"].items() if i["slots"]} == expected

        wait_until(owned, timeout=timeout, interval=0.2)

    def restart(self, name: str) -> None:
        """Start node `name` again over its data dir (after a kill -9)."""
        server = start_server(self.root / name, "--node-id", name, *self.common)
        self.stack.callback(server.terminate)
        self.servers[name] = server

    def owner(self, tenant: str) -> str:
        with self.http("n1") as http:
            r = http.get("/v1/admin/cluster", params={"tenant": tenant})
        node: str = r.json()["tenant"]["owner"]["node"]
        return node

    def rollout(self, via: str, rollout_id: str) -> dict[str, Any]:
        with self.http(via) as http:
            r = http.get(f"/v1/admin/groups/shop/rollouts/{rollout_id}")
            assert r.status_code == 200, r.text
        snap: dict[str, Any] = r.json()
        return snap

    def finished(self, via: str, rollout_id: str, timeout: float = 60) -> dict[str, Any]:
        def ended() -> dict[str, Any]:
            snap = self.rollout(via, rollout_id)
            return {} if snap["state"] == "running" else snap

        try:
            return wait_until(ended, timeout=timeout, interval=0.2)
        except AssertionError:
            logs = "\n".join(f"--- {n}\n{s.log_tail(30)}" for n, s in self.servers.items())
            raise AssertionError(f"{self.rollout(via, rollout_id)}\n{logs}") from None

    def query(self, via: str, tenant: str, sql: str) -> list[list[Any]]:
        """The rows of `sql` on the tenant; a 503 (its slot moving, the tenant being restored
        after a takeover) is retried, as a client told Retry-After would."""

        def answer() -> list[httpx.Response]:
            with self.http(via) as http:
                r = http.post(f"/v1/tenants/{tenant}/query", json={"sql": sql})
            return [] if r.status_code == 503 else [r]

        r = wait_until(answer, timeout=60, interval=0.2)[0]
        assert r.status_code == 200, r.text
        rows: list[list[Any]] = r.json()["rows"]
        return rows

    def columns(self, via: str, tenant: str, table: str) -> list[str]:
        return [row[0] for row in self.query(via, tenant, f"SELECT name FROM pragma_table_info('{table}')")]

    def tables(self, via: str, tenant: str) -> set[str]:
        return {row[0] for row in self.query(via, tenant, "SELECT name FROM sqlite_schema")}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("fleetwork")
    with running_etcd(1) as etcd, contextlib.ExitStack() as stack:
        flags = {
            "--cluster-etcd": ",".join(etcd.endpoints),
            "--cluster-lease-ttl": "3",
            # long enough for a node killed and restarted at once to keep its slots, short
            # enough for a node killed for good to be taken over within the test
            "--cluster-takeover-grace": "6",
            "--replica-url": (root / "replica").as_uri(),
            "--signing-key-file": str(keys.signing_key_file(root)),
        }
        common = [part for pair in flags.items() for part in pair]
        servers: dict[str, ServerProcess] = {}
        for name in ("n1", "n2"):
            server = start_server(root / name, "--node-id", name, *common)
            stack.callback(server.terminate)
            servers[name] = server
        made = Fleet(etcd, servers, common, root, stack)
        made.settled()
        yield made


def test_a_group_created_through_one_node_is_used_through_the_other(fleet: Fleet) -> None:
    with fleet.http("n1") as http:
        r = http.post("/v1/admin/groups", json={"name": "shop", "schema": "CREATE TABLE items (id, name)"})
        assert r.status_code == 201, r.text
    with fleet.http("n2") as http:
        assert http.get("/v1/admin/groups/shop").status_code == 200
        for tenant in TENANTS:  # each created on the node owning it
            r = http.post("/v1/admin/tenants", json={"id": tenant, "group": "shop"})
            assert r.status_code == 201, r.text
    assert {fleet.owner(t) for t in TENANTS} == {"n1", "n2"}
    for tenant in TENANTS:
        assert fleet.columns("n2", tenant, "items") == ["id", "name"]


def test_two_racing_creates_of_a_group_through_two_nodes_one_gets_409(fleet: Fleet) -> None:
    barrier = threading.Barrier(2)
    statuses: dict[str, int] = {}

    def create(node: str) -> None:
        with fleet.http(node) as http:
            barrier.wait()
            statuses[node] = http.post(
                "/v1/admin/groups", json={"name": "race", "schema": "CREATE TABLE t (x)"}
            ).status_code

    threads = [threading.Thread(target=create, args=(n,)) for n in ("n1", "n2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses.values()) == [201, 409]


def test_a_migration_added_through_the_other_node_and_a_rollout_through_either(fleet: Fleet) -> None:
    with fleet.http("n2") as http:
        r = http.post(
            "/v1/admin/groups/shop/migrations",
            json={"name": "price", "sql": "ALTER TABLE items ADD COLUMN price REAL"},
        )
        assert r.status_code == 201, r.text
    with fleet.http("n1") as http:
        group = http.get("/v1/admin/groups/shop").json()
        assert [m["name"] for m in group["migrations"]] == ["0001_price"] and group["released"] == 0
        r = http.post("/v1/admin/groups/shop/rollouts", json={})
        assert r.status_code == 202, r.text
        rollout_id = r.json()["id"]
    snap = fleet.finished("n2", rollout_id)
    assert snap["state"] == "completed", snap
    assert snap["total"] == len(TENANTS) and snap["migrated"] + snap["current"] == len(TENANTS)
    assert set(snap["nodes"]) == {"n1", "n2"} and all(p["migrated"] > 0 for p in snap["nodes"].values())
    assert fleet.rollout("n1", rollout_id)["state"] == "completed"
    for node in ("n1", "n2"):
        with fleet.http(node) as http:
            group = http.get("/v1/admin/groups/shop").json()
        assert group["released"] == 1 and group["rollout"]["id"] == rollout_id, group
    for tenant in TENANTS:
        assert fleet.columns("n1", tenant, "items") == ["id", "name", "price"]


def _start_slow(fleet: Fleet, via: str, name: str, **options: Any) -> str:
    sql = SLOW.format(name=name, rows=2_000_000)
    with fleet.http(via) as http:
        r = http.post("/v1/admin/groups/shop/migrations", json={"name": name, "sql": sql})
        assert r.status_code == 201, r.text
        r = http.post("/v1/admin/groups/shop/rollouts", json={"concurrency": 1, **options})
        assert r.status_code == 202, r.text
    rollout_id: str = r.json()["id"]
    return rollout_id


def _wait_midway(fleet: Fleet, rollout_id: str, node: str) -> None:
    """Until `node`'s part of the rollout is seen running with some but not all tenants migrated."""

    def midway() -> bool:
        part = fleet.rollout("n1", rollout_id)["nodes"].get(node, {})
        return bool(part.get("state") == "running" and 0 < part["migrated"] < part["total"])

    wait_until(midway, timeout=30, interval=0.02)


def test_stop_and_resume_through_the_other_node(fleet: Fleet) -> None:
    rollout_id = _start_slow(fleet, "n1", "slow_a")
    with fleet.http("n2") as http:
        r = http.post(f"/v1/admin/groups/shop/rollouts/{rollout_id}/stop")
        assert r.status_code == 200 and r.json()["state"] in ("stopping", "stopped"), r.text
    snap = fleet.finished("n1", rollout_id)
    assert snap["state"] == "stopped" and snap["remaining"] > 0, snap
    with fleet.http("n1") as http:
        assert http.get("/v1/admin/groups/shop").json()["released"] == 1  # nothing released
        r = http.post(f"/v1/admin/groups/shop/rollouts/{rollout_id}/stop", content=b"{}")
        assert r.status_code == 200 and r.json()["state"] == "stopped", r.text  # as it is
        r = http.post(f"/v1/admin/groups/shop/rollouts/{rollout_id}/resume", json={"concurrency": 4})
        assert r.status_code == 202, r.text
    snap = fleet.finished("n2", rollout_id)
    assert snap["state"] == "completed" and snap["resumed"] == 1, snap
    for tenant in TENANTS:
        assert "slow_a" in fleet.tables("n2", tenant)


def test_sqlfleet_migrate_dry_run_canary_and_rollout_through_any_node(fleet: Fleet) -> None:
    with fleet.http("n1") as http:
        r = http.post("/v1/admin/groups/shop/migrations", json={"name": "tag", "sql": "CREATE TABLE tag (t)"})
        assert r.status_code == 201, r.text
        released = http.get("/v1/admin/groups/shop").json()["released"]
    n2 = fleet.servers["n2"]
    dry = as_json(cli(n2, "migrate", "shop", "--dry-run", "--json"))
    assert (dry["state"], dry["migrated"], dry["failed"]) == ("completed", len(TENANTS), 0), dry
    canary = as_json(cli(n2, "migrate", "shop", "--canary", "2", "--json"))
    assert (canary["state"], canary["migrated"]) == ("stopped", 2), canary  # one on each node
    assert set(canary["nodes"]) == {"n1", "n2"}
    with fleet.http("n1") as http:
        assert http.get("/v1/admin/groups/shop").json()["released"] == released
    out = ok(cli(n2, "migrate", "shop"))
    assert "released up to" in out and "n1" in out and "n2" in out, out
    with fleet.http("n1") as http:
        assert http.get("/v1/admin/groups/shop").json()["released"] == released + 1
    for tenant in TENANTS:
        assert "tag" in fleet.tables("n1", tenant)


def test_a_failure_on_one_node_stops_every_part_and_abort_goes_through_the_other(fleet: Fleet) -> None:
    victim = next(t for t in TENANTS if fleet.owner(t) == "n2")
    with fleet.http("n1") as http:
        r = http.post(
            f"/v1/tenants/{victim}/query", json={"sql": "ALTER TABLE items ADD COLUMN flag INTEGER"}
        )
        assert r.status_code == 200, r.text
        released = http.get("/v1/admin/groups/shop").json()["released"]
        r = http.post(
            "/v1/admin/groups/shop/migrations",
            json={"name": "flag", "sql": "ALTER TABLE items ADD COLUMN flag INTEGER"},
        )
        assert r.status_code == 201, r.text
        r = http.post("/v1/admin/groups/shop/rollouts", json={"max_failures": 1, "concurrency": 1})
        assert r.status_code == 202, r.text
        rollout_id = r.json()["id"]
    snap = fleet.finished("n1", rollout_id)
    assert snap["state"] == "stopped" and "max_failures" in snap["reason"], snap
    assert [f["tenant"] for f in snap["failures"]] == [victim]
    with fleet.http("n2") as http:
        r = http.post(f"/v1/admin/groups/shop/rollouts/{rollout_id}/abort")
        assert r.status_code == 200 and r.json()["state"] == "aborted", r.text
    for node in ("n1", "n2"):
        with fleet.http(node) as http:
            group = http.get("/v1/admin/groups/shop").json()
        assert group["released"] == released and group["rollout"]["state"] == "aborted", group
    with fleet.http("n1") as http:  # mend the victim: the next rollout brings everyone to `flag`
        r = http.post(f"/v1/tenants/{victim}/query", json={"sql": "ALTER TABLE items DROP COLUMN flag"})
        assert r.status_code == 200, r.text


def test_stop_resume_abort_and_migrations_are_checked_alike_through_either_node(fleet: Fleet) -> None:
    with fleet.http("n1") as http:
        ended = http.get("/v1/admin/groups/shop/rollouts").json()["rollouts"][0]
    assert ended["state"] == "aborted", ended
    path = f"/v1/admin/groups/shop/rollouts/{ended['id']}"
    for via in ("n1", "n2"):
        with fleet.http(via) as http:
            for action in ("stop", "resume", "abort"):
                for body in (b"", b"{}"):
                    r = http.post(f"{path}/{action}", content=body)
                    assert r.status_code == 409 and r.json()["error"]["code"] == "rollout_finished", r.text
                    assert "is aborted" in r.json()["error"]["message"], r.text  # worded alike
                    r = http.post(f"/v1/admin/groups/shop/rollouts/nope/{action}", content=body)
                    assert r.status_code == 404, r.text
                assert http.post(f"{path}/{action}", content=b'{"surprise": 1}').status_code == 400
            for sql in ("", "-- to do"):
                r = http.post("/v1/admin/groups/shop/migrations", json={"name": "later", "sql": sql})
                assert r.status_code == 400 and "no SQL statement" in r.json()["error"]["message"], r.text
            r = http.post("/v1/admin/groups/shop/migrations", json={"name": "price", "sql": "SELECT 1;"})
            assert r.status_code == 400 and "already has a migration named 'price'" in r.text, r.text


def test_a_node_drained_mid_rollout_every_tenant_reaches_the_target(fleet: Fleet) -> None:
    rollout_id = _start_slow(fleet, "n2", "slow_b")
    wait_until(lambda: fleet.rollout("n1", rollout_id)["done"] > 0, timeout=30, interval=0.02)
    with fleet.http("n1") as http:
        r = http.post("/v1/admin/cluster/nodes/n2/drain")
        assert r.status_code == 200, r.text
    try:
        snap = fleet.finished("n1", rollout_id, timeout=90)
        assert snap["state"] == "completed", snap
        fleet.settled(("n1",))  # the drain may still be moving slots
        for tenant in TENANTS:
            assert "slow_b" in fleet.tables("n1", tenant)
    finally:
        with fleet.http("n1") as http:
            http.delete("/v1/admin/cluster/nodes/n2/drain")
        fleet.settled()


def test_a_node_killed_mid_rollout_every_tenant_reaches_the_target(fleet: Fleet) -> None:
    rollout_id = _start_slow(fleet, "n1", "slow_c")
    _wait_midway(fleet, rollout_id, "n2")
    fleet.servers["n2"].kill9()
    fleet.restart("n2")  # with its data dir: it comes back, claims its slots, runs its part again
    snap = fleet.finished("n2", rollout_id, timeout=90)
    assert snap["state"] == "completed", snap
    fleet.settled()
    for tenant in TENANTS:
        assert "slow_c" in fleet.tables("n1", tenant)


def test_a_node_killed_for_good_mid_rollout_is_taken_over_and_every_tenant_reaches_the_target(
    fleet: Fleet,
) -> None:
    rollout_id = _start_slow(fleet, "n1", "slow_d")
    _wait_midway(fleet, rollout_id, "n2")
    fleet.servers["n2"].kill9()
    snap = fleet.finished("n1", rollout_id, timeout=120)  # lease TTL + grace, then n1 runs n2's share
    assert snap["state"] == "completed", snap
    # each tenant once: n2's part (its slots taken over, run again by n1) no longer counts
    everyone = (len(TENANTS), len(TENANTS), 0)
    assert (snap["total"], snap["done"], snap["remaining"], set(snap["nodes"])) == (*everyone, {"n1"}), snap
    fleet.settled(("n1",))
    for tenant in TENANTS:  # restored on first access, caught up on open
        assert "slow_d" in fleet.tables("n1", tenant)
    fleet.restart("n2")  # back, with slots again: the rollout's status stays as it was
    fleet.settled()
    for via in ("n1", "n2"):
        snap = fleet.rollout(via, rollout_id)
        assert snap["state"] == "completed" and set(snap["nodes"]) == {"n1"}, snap
        assert (snap["total"], snap["done"], snap["remaining"]) == everyone, snap
