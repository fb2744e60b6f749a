"""`sqlfleet restore --all` through one node of a healthy cluster (finding 8a of issue 17,
session 4): every tenant is present on its owner, so nothing is restored and no warning about
old tokens is given, though the node's own backup catalog still holds tenants it handed over."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cluster.test_any_node import owned_by
from tests.cluster.test_serving import running_nodes
from tests.support.cli import cli, ok
from tests.support.etcd import running_etcd


def test_restore_all_on_a_healthy_cluster_restores_nothing_and_warns_of_nothing(tmp_path: Path) -> None:
    with running_etcd(1) as etcd, running_nodes(etcd, tmp_path) as two:
        n1, n2 = two.servers["n1"], two.servers["n2"]
        tenants = owned_by("n1", "moved", 2)
        with n1.client() as http:
            for tenant in tenants:
                assert http.post("/v1/admin/tenants", json={"id": tenant}).status_code == 201
            assert http.get("/v1/admin/backups/tenants").status_code == 200
            assert http.post("/v1/admin/cluster/nodes/n1/drain").status_code == 200
        two.settled(("n2",))  # n1 gave up every slot AND n2 claimed each (between the two: 503)
        with n2.client() as http:  # opened on their new owner: present there
            for tenant in tenants:
                r = http.post(f"/v1/tenants/{tenant}/query", json={"sql": "SELECT 1"})
                assert r.status_code == 200, r.text
        result = cli(n1, "restore", "--all")
        assert "restored 0 of 0 missing tenants (2 already present)" in ok(result), result.stdout
        assert "Warning" not in result.stderr, result.stderr
        body = json.loads(ok(cli(n1, "restore", "--all", "--json")))
        assert body["restored"] == [] and body["warning"] is None, body
