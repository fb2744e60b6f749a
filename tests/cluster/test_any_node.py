"""Through any node (issue 17): restore, backups, export/dump/import and the change feed of a
tenant that the other node owns, on one cluster of two real `sqlfleet serve` processes shared by
the module (one etcd member, one replica directory, one signing key)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cluster.slots import assignment, slot_of
from tests.cluster.test_serving import Nodes, running_nodes
from tests.support.etcd import running_etcd
from tests.support.sse import subscribe
from tests.support.waiting import wait_until

OWNERS = assignment(("n1", "n2"))
# a closed feed's reader thread (tests.support.sse) ends at the next event: heartbeats come soon
FLAGS = ("--changes-heartbeat", "1")


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    with running_etcd(1) as etcd, running_nodes(etcd, tmp_path_factory.mktemp("any-node"), *FLAGS) as made:
        yield made


def owned_by(node: str, prefix: str, count: int = 1) -> list[str]:
    """`count` tenant ids starting with `prefix` whose slots the controller gives `node`."""
    found = [f"{prefix}-{n}" for n in range(4096) if OWNERS[slot_of(f"{prefix}-{n}")] == node]
    return found[:count]


def made(nodes: Nodes, tenant: str, rows: int = 3) -> str:
    """`tenant` created through n1 with a table of `rows` rows; a rw token for it."""
    with nodes.servers["n1"].client() as http:
        assert http.post("/v1/admin/tenants", json={"id": tenant}).status_code == 201
        statements: list[dict[str, Any]] = [{"sql": "CREATE TABLE t (x)"}]
        statements += [{"sql": "INSERT INTO t VALUES (?)", "params": [n]} for n in range(rows)]
        r = http.post(f"/v1/tenants/{tenant}/batch", json={"statements": statements})
        assert r.status_code == 200, r.text
        token: str = http.post(f"/v1/admin/tenants/{tenant}/tokens", json={"access": "rw"}).json()["token"]
    assert nodes.owner(tenant) == "n2"
    return token


def _slots(nodes: Nodes, node: str) -> int:
    with nodes.servers["n1"].client() as http:
        count: int = http.get("/v1/admin/cluster").json()["nodes"][node]["slots"]
        return count


def rows(nodes: Nodes, via: str, tenant: str) -> list[int]:
    with nodes.servers[via].client() as http:
        r = http.post(f"/v1/tenants/{tenant}/query", json={"sql": "SELECT x FROM t ORDER BY x"})
        assert r.status_code == 200, r.text
        return [row[0] for row in r.json()["rows"]]


def test_backups_and_restores_of_the_other_nodes_tenant(nodes: Nodes) -> None:
    tenant, twin = owned_by("n2", "rs", 2)
    made(nodes, tenant)
    with nodes.servers["n1"].client(timeout=60) as http:
        described = http.get(f"/v1/admin/tenants/{tenant}/backups")
        assert described.status_code == 200 and described.json()["tenant"] == tenant, described.text
        verified = http.post(f"/v1/admin/tenants/{tenant}/backups/verify")
        assert verified.status_code == 200 and verified.json()["ok"], verified.text
        time.sleep(0.05)
        middle = verified.json()["restored_to"]
        r = http.post(f"/v1/tenants/{tenant}/query", json={"sql": "DELETE FROM t"})
        assert r.status_code == 200, r.text
        r = http.post(f"/v1/admin/tenants/{tenant}/restore", json={"timestamp": middle})  # in place
        assert r.status_code == 200, r.text
        assert rows(nodes, "n1", tenant) == [0, 1, 2]
        # as a new tenant whose slot the same node owns: made there, served through any node
        r = http.post(f"/v1/admin/tenants/{tenant}/restore", json={"timestamp": "latest", "as": twin})
        assert r.status_code == 200 and r.json()["tenant"] == twin, r.text
        assert nodes.owner(twin) == "n2" and rows(nodes, "n1", twin) == [0, 1, 2]


def test_a_restore_as_a_tenant_of_another_nodes_slot_is_refused_clearly(nodes: Nodes) -> None:
    (tenant,), (elsewhere,) = owned_by("n2", "ra"), owned_by("n1", "ra-other")
    made(nodes, tenant)
    for via in ("n1", "n2"):
        with nodes.servers[via].client(timeout=60) as http:
            r = http.post(f"/v1/admin/tenants/{tenant}/restore", json={"as": elsewhere})
            assert r.status_code == 409, r.text
            error = r.json()["error"]
            assert error["code"] == "restore_target_elsewhere" and elsewhere in error["message"], error
            assert http.get(f"/v1/admin/tenants/{elsewhere}").status_code == 404


def test_export_dump_and_a_large_import_of_the_other_nodes_tenant(nodes: Nodes, tmp_path: Path) -> None:
    tenant, imported = owned_by("n2", "ex", 2)
    token = made(nodes, tenant)
    n1 = nodes.servers["n1"]
    for auth in (f"Bearer {n1.admin_key}", f"Bearer {token}"):
        with httpx.Client(base_url=n1.url, headers={"authorization": auth}, timeout=60) as http:
            exported = http.get(f"/v1/tenants/{tenant}/export")
            assert exported.status_code == 200, exported.text
            file = tmp_path / "export.db"
            file.write_bytes(exported.content)
            with sqlite3.connect(file) as db:
                assert [x for (x,) in db.execute("SELECT x FROM t ORDER BY x")] == [0, 1, 2]
            dumped = http.get(f"/v1/tenants/{tenant}/dump")
            assert dumped.status_code == 200 and "CREATE TABLE t" in dumped.text, dumped.text
    # an upload far past max_body_bytes (4 MiB) streams through the proxy to the owner
    big = tmp_path / "big.db"
    with sqlite3.connect(big) as db:
        db.execute("CREATE TABLE t (x, pad)")
        db.executemany("INSERT INTO t VALUES (?, randomblob(4000))", [(n,) for n in range(3000)])
    db.close()
    with n1.client(timeout=120) as http, open(big, "rb") as upload:
        r = http.put(f"/v1/admin/tenants/{imported}/import", content=upload)
        assert r.status_code == 201, r.text
        assert r.json()["imported"]["bytes"] == big.stat().st_size
        r = http.put(f"/v1/admin/tenants/{tenant}/import?replace=true", content=big.read_bytes())
        assert r.status_code == 200, r.text
    assert nodes.owner(imported) == "n2"
    assert rows(nodes, "n1", imported) == list(range(3000)) == rows(nodes, "n2", tenant)


def test_the_change_feed_of_the_other_nodes_tenant_streams_and_resumes(nodes: Nodes) -> None:
    (tenant,) = owned_by("n2", "feed")
    token = made(nodes, tenant, rows=0)
    auth = {"authorization": f"Bearer {token}"}
    n1 = nodes.servers["n1"]
    with httpx.Client(base_url=n1.url, timeout=httpx.Timeout(30, read=60)) as http:

        def insert(x: int) -> None:
            r = http.post(
                f"/v1/tenants/{tenant}/query", json={"sql": f"INSERT INTO t VALUES ({x})"}, headers=auth
            )
            assert r.status_code == 200, r.text

        with subscribe(http, tenant, auth) as feed:
            assert feed.next().kind == "open"
            insert(1)  # each commit arrives by itself, while the stream stays open: not buffered
            first = feed.next()
            assert first.kind == "commit" and first.data["changes"][0]["row"] == {"x": 1}, first
        insert(2)
        insert(3)
        with subscribe(http, tenant, auth, last_event_id=first.id) as feed:
            assert feed.next().kind == "open"
            got = [feed.next().data["changes"][0]["row"]["x"] for _ in range(2)]
            assert got == [2, 3]


def test_a_tenant_handed_over_but_never_opened_exists_for_create_and_delete(nodes: Nodes) -> None:
    """Drain n2: its tenants are n1's, in a handoff manifest until first opened. Creating one
    again is 409 (never a fresh empty tenant); deleting one before any access deletes it."""
    quiet = owned_by("n2", "quiet", 2)
    for tenant in quiet:
        made(nodes, tenant)
    n1 = nodes.servers["n1"]
    with n1.client(timeout=60) as http:
        r = http.post("/v1/admin/cluster/nodes/n2/drain")
        assert r.status_code == 200, r.text
        try:
            wait_until(lambda: _slots(nodes, "n1") == 16384, timeout=90)
            again, gone = quiet
            r = http.post("/v1/admin/tenants", json={"id": again})
            assert r.status_code == 409, r.text
            assert http.delete(f"/v1/admin/tenants/{gone}").status_code == 204
            assert http.get(f"/v1/admin/tenants/{gone}").status_code == 404
            assert rows(nodes, "n2", again) == [0, 1, 2]
        finally:
            assert http.delete("/v1/admin/cluster/nodes/n2/drain").status_code == 200
            nodes.settled(("n1", "n2"))
    wait_until(lambda: nodes.owner(quiet[0]) == "n2", timeout=30)


def _requests(nodes: Nodes, via: str, route: str) -> float:
    """`via`'s count of requests labelled `route` (sqlfleet_http_requests_total, any status)."""
    with nodes.servers[via].client() as http:
        text = http.get("/metrics").text
    prefix = f'sqlfleet_http_requests_total{{route="{route}",'
    return sum(float(line.rpartition(" ")[2]) for line in text.splitlines() if line.startswith(prefix))


def test_a_forwarded_request_is_counted_under_its_route(nodes: Nodes) -> None:
    """Finding 12 (issue 17): the forwarding node labels what it forwards by route, not `unmatched`."""
    (tenant,) = owned_by("n2", "label")
    made(nodes, tenant)
    route = "/v1/tenants/{tenant}/query"
    before = _requests(nodes, "n1", route), _requests(nodes, "n1", "unmatched")
    assert rows(nodes, "n1", tenant) == [0, 1, 2]
    after = _requests(nodes, "n1", route), _requests(nodes, "n1", "unmatched")
    assert after == (before[0] + 1, before[1]), (before, after)
