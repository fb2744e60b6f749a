"""Cluster-wide answers (issue 17 session 4, finding 7): a node whose lease is gone is not waited
for; the answer is a 503 naming it, at once, until it is back."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ops.process import pause, resume
from tests.cluster.test_serving import TTL, running_nodes
from tests.support.etcd import running_etcd
from tests.support.waiting import wait_until


@pytest.mark.parametrize("path", ["/v1/admin/tenants", "/v1/admin/backups/tenants?deleted=true"])
def test_a_list_gives_up_on_a_node_whose_lease_is_gone(tmp_path: Path, path: str) -> None:
    with running_etcd(1) as etcd, running_nodes(etcd, tmp_path) as two:
        n1, n2 = two.servers["n1"], two.servers["n2"]
        with n1.client(timeout=60) as http:
            assert http.get(path).status_code == 200
            pause(n2.proc)
            try:
                started = time.monotonic()
                r = http.get(path)  # asked while n2's lease still runs: cut once it is gone
                waited = time.monotonic() - started
                assert r.status_code == 503 and r.json()["error"]["code"] == "node_unreachable", r.text
                assert waited < TTL + 5, waited
                message = r.json()["error"]["message"]
                assert "node 'n2' lost its cluster lease" in message, message
                assert 1 <= int(r.headers["retry-after"]) <= 30, r.headers
                started = time.monotonic()
                r = http.get(path)  # asked after: answered at once
                assert r.status_code == 503 and time.monotonic() - started < 2, r.text
                assert "node 'n2' lost its cluster lease" in r.json()["error"]["message"], r.text
            finally:
                resume(n2.proc)
            wait_until(lambda: http.get(path).status_code == 200, timeout=30)
