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

from backups.catalog import BackupCatalog, ChunkRow
from cluster.slots import assignment, slot_of
from ops.process import pause, resume
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


def made(nodes: Nodes, tenant: str, rows: int = 3, group: str | None = None) -> str:
    """`tenant` created through n1 (in `group`) with a table of `rows` rows; a rw token for it."""
    with nodes.servers["n1"].client() as http:
        assert http.post("/v1/admin/tenants", json={"id": tenant, "group": group}).status_code == 201
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


def test_a_restore_as_a_tenant_of_the_other_nodes_slot_runs_on_that_node(nodes: Nodes) -> None:
    """Only a slot's owner makes a tenant in it: n2's tenant restored `as` ids of n1's slots runs
    on n1 through either node, from n2's backups (lent to n1's catalog for the restore only), to
    a past moment and to the latest; the source is untouched. An id that exists is refused and a
    source no node has backups of is not found, as on a single server."""
    (tenant,), twins = owned_by("n2", "ra"), owned_by("n1", "ra-other", 3)
    with nodes.servers["n1"].client(timeout=60) as http:
        assert http.post("/v1/admin/groups", json={"name": "ra-shop"}).status_code == 201
    made(nodes, tenant, group="ra-shop")
    with nodes.servers["n2"].client(timeout=60) as http:
        verified = http.post(f"/v1/admin/tenants/{tenant}/backups/verify")
        assert verified.status_code == 200 and verified.json()["ok"], verified.text
        middle = verified.json()["restored_to"]
        time.sleep(0.05)
        r = http.post(f"/v1/tenants/{tenant}/query", json={"sql": "INSERT INTO t VALUES (3)"})
        assert r.status_code == 200, r.text
    for via, twin, stamp in (("n1", twins[0], middle), ("n2", twins[1], "latest")):
        with nodes.servers[via].client(timeout=60) as http:
            r = http.post(f"/v1/admin/tenants/{tenant}/restore", json={"timestamp": stamp, "as": twin})
        assert r.status_code == 200 and r.json()["tenant"] == twin, r.text
        assert nodes.owner(twin) == "n1"
        with nodes.servers["n1"].client() as http:  # a fork keeps its group, as on a single server
            assert http.get(f"/v1/admin/tenants/{twin}").json()["group"] == "ra-shop"
    assert rows(nodes, "n2", twins[0]) == [0, 1, 2] and rows(nodes, "n1", twins[1]) == [0, 1, 2, 3]
    assert nodes.owner(tenant) == "n2" and rows(nodes, "n1", tenant) == [0, 1, 2, 3]
    with nodes.servers["n1"].client() as http:  # lent, then taken back: n2's history stays n2's
        assert http.get(f"/v1/admin/backups/tenants/{tenant}").json() == {"tenant": tenant, "rows": []}
    (nowhere,) = owned_by("n2", "ra-nowhere")
    for via in ("n1", "n2"):
        with nodes.servers[via].client(timeout=60) as http:
            r = http.post(f"/v1/admin/tenants/{tenant}/restore", json={"as": twins[0]})
            assert r.status_code == 409 and r.json()["error"]["code"] == "tenant_exists", r.text
            r = http.post(f"/v1/admin/tenants/{nowhere}/restore", json={"as": twins[2]})
            assert r.status_code == 404 and r.json()["error"]["code"] == "tenant_not_found", r.text
            assert http.get(f"/v1/admin/tenants/{twins[2]}").status_code == 404
    assert rows(nodes, "n1", twins[0]) == [0, 1, 2]


def test_rows_lent_for_a_restore_as_are_taken_back_and_the_catalogs_own_stay(tmp_path: Path) -> None:
    """What n1 lends itself of n2's tenant for a restore `as` (BackupCatalog.lent): rows it
    had stay, the others go once the last of two overlapping restores is done."""
    catalog = BackupCatalog(tmp_path / "backups.db")
    try:

        def row(first: int, key: str) -> ChunkRow:
            return ChunkRow(
                "src", "g1", "frames", first, first + 1, 1.0, 2.0, 4096, key, 0, 10, ((first + 1, 2.0),)
            )

        own, theirs = row(1, "segments/n1/a"), row(3, "segments/n2/b")
        catalog.add_rows([own])
        with catalog.lent("src", [own, theirs]):
            with catalog.lent("src", [own, theirs]):
                assert catalog.chunks("src") == [own, theirs]
            assert catalog.chunks("src") == [own, theirs]
        assert catalog.chunks("src") == [own]
    finally:
        catalog.close()


def test_a_restore_as_whose_source_owner_does_not_answer_is_a_503(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """n1 restores n2's tenant `as` an id of its own slot and cannot reach n2's backups: n2
    paused (answered at the request's deadline, 1 s here), killed (at once), then gone from
    the routing table once its lease (5 s here) ran out. Each is a 503 with Retry-After, and
    nothing was made."""
    root = tmp_path_factory.mktemp("restore-as-silent")
    with running_etcd(1) as etcd, running_nodes(etcd, root, "--request-timeout", "1", ttl=5) as two:
        (tenant,), (twin,) = owned_by("n2", "silent"), owned_by("n1", "silent-twin")
        made(two, tenant)
        n1, n2 = two.servers["n1"], two.servers["n2"]

        def restore_as() -> httpx.Response:
            with n1.client(timeout=60) as http:
                return http.post(f"/v1/admin/tenants/{tenant}/restore", json={"as": twin})

        pause(n2.proc)
        try:
            started = time.monotonic()
            r = restore_as()
            waited = time.monotonic() - started
        finally:
            resume(n2.proc)
        assert r.status_code == 503 and r.json()["error"]["code"] == "node_unreachable", r.text
        assert r.headers["retry-after"] == "1" and 1 <= waited < 4, (waited, r.text)
        assert "within 1 s" in r.json()["error"]["message"], r.text
        n2.kill9()
        r = restore_as()
        assert r.status_code == 503 and r.json()["error"]["code"] == "node_unreachable", r.text
        wait_until(lambda: restore_as().json()["error"]["code"] == "slot_unowned", timeout=30)
        r = restore_as()
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        with n1.client() as http:
            assert http.get(f"/v1/admin/tenants/{twin}").status_code == 404


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
