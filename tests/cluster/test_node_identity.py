"""One node id, one live node (cluster.membership): a second process started with a live node's id
is refused and takes nothing from it, however it comes (a fresh start, a data dir that last ran
as another process, a node that lost its lease and would register again); a node restarted over
its own dead registration joins at once; a killed node's id is free once its lease runs out.
And every cluster URL setting is checked at start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from cluster.errors import NodeIdInUse
from cluster.membership import ID_WAIT_MARGIN, Node
from ops.node import INCARNATION_FILE
from ops.process import REPO, kill, spawn, stop
from ops.server import Server
from ops.settings import Settings
from tenants.errors import BadRequest
from tenants.layout import Layout
from tests.cluster.admin import node_record, revoke
from tests.cluster.peers import Peers
from tests.support.server import run_command
from tests.support.waiting import wait_until

TTL = 1
DUPLICATE = "http://duplicate.invalid:9"


def _killed_node(peers: Peers, node_id: str, ttl: int) -> str:
    """Start `node_id` in a child process, SIGKILL it (its lease stays until it runs out), and
    return its process incarnation."""
    config = {**asdict(peers.config(node_id, ttl)), "endpoints": list(peers.etcd.endpoints)}
    proc = spawn(
        [sys.executable, "-m", "tests.cluster.node_child", json.dumps(config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"?\n")
        proc.stdin.flush()
        incarnation = str(json.loads(proc.stdout.readline())["incarnation"])
        kill(proc)
    finally:
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()
        stop(proc, 10)
    record = node_record(peers, node_id)
    assert record is not None and record["process"] == incarnation  # still registered
    return incarnation


def _duplicate(peers: Peers, node_id: str, previous_process: str | None = None) -> Node:
    """A node with `node_id`, reached at another URL."""
    return Node(replace(peers.config(node_id, TTL), node_url=DUPLICATE), previous_process=previous_process)


@pytest.mark.parametrize("previous_process", [None, "5eed"])
def test_a_second_node_with_a_live_nodes_id_is_refused_and_takes_nothing(
    peers: Peers, previous_process: str | None
) -> None:
    """A fresh start, and one whose data dir last ran as some other (dead) process."""
    live = peers.start("n1", ttl=TTL, ownership=False).node
    before = node_record(peers, "n1")
    duplicate = _duplicate(peers, "n1", previous_process=previous_process)
    started = time.monotonic()
    with pytest.raises(NodeIdInUse, match=r"node id n1 is in use by a live node at http://n1\.invalid:8080"):
        duplicate.start()
    waited = time.monotonic() - started
    assert TTL <= waited < 2 * TTL + ID_WAIT_MARGIN + 5  # it gave a killed holder's lease time to run out
    assert node_record(peers, "n1") == before
    assert live.alive() and live.why_not_serving() is None


def test_a_node_restarted_over_its_own_dead_registration_joins_at_once(peers: Peers) -> None:
    """Its data dir last ran as the process that holds `nodes/<id>`: replaced, not waited for."""
    previous = _killed_node(peers, "n1", ttl=30)
    started = time.monotonic()
    node = peers.start("n1", ttl=30, ownership=False, previous_process=previous).node
    assert time.monotonic() - started < 5  # not the 30 s the dead lease has left
    assert node.incarnation != previous
    assert node_record(peers, "n1") == {
        "url": "http://n1.invalid:8080",
        "incarnation": node.incarnation,
        "process": node.incarnation,
    }


def test_a_killed_nodes_id_is_free_once_its_lease_runs_out(peers: Peers) -> None:
    """Started from elsewhere (no data dir that knows the dead process), it waits for the lease."""
    previous = _killed_node(peers, "n1", ttl=2)
    node = peers.start("n1", ttl=TTL, ownership=False).node
    assert node.alive() and node.incarnation != previous
    record = node_record(peers, "n1")
    assert record is not None and record["incarnation"] == node.incarnation


def test_a_node_that_lost_its_lease_does_not_take_back_an_id_another_holds(peers: Peers) -> None:
    node = peers.start("n1", ttl=TTL, ownership=False).node
    node.keepalives_paused = True
    assert node.lease is not None
    revoke(peers, node.lease.id)
    duplicate = _duplicate(peers, "n1")
    duplicate.start()
    try:
        node.keepalives_paused = False  # hears that its lease is gone, tries to register again
        wait_until(lambda: node.lease is None, timeout=30)
        time.sleep(3 * TTL)
        assert not node.alive()
        record = node_record(peers, "n1")
        assert record is not None and record["url"] == DUPLICATE
    finally:
        duplicate.stop()
    wait_until(node.alive, timeout=30)  # the id is free again: it joins
    record = node_record(peers, "n1")
    assert record is not None and record["url"] == "http://n1.invalid:8080"


def _settings(peers: Peers, tmp_path: Path, node_id: str) -> Settings:
    return Settings.load(
        environ={},
        data_dir=tmp_path / "data",
        admin_key="k" * 32,
        cluster_etcd=",".join(peers.etcd.endpoints),
        cluster_name=peers.name,
        cluster_lease_ttl=TTL,
        node_id=node_id,
        node_url=DUPLICATE,
        replica_url=(tmp_path / "replica").as_uri(),
    )


def test_a_server_with_a_live_nodes_id_refuses_to_start(peers: Peers, tmp_path: Path) -> None:
    peers.start("x1", ttl=TTL, ownership=False)
    before = node_record(peers, "x1")
    with pytest.raises(NodeIdInUse, match=r"node id x1 is in use by a live node at http://x1\.invalid:8080"):
        Server.build(_settings(peers, tmp_path, "x1")).close()
    assert node_record(peers, "x1") == before


def test_a_server_restarted_over_its_own_dead_registration_starts_at_once(
    peers: Peers, tmp_path: Path
) -> None:
    """The data dir notes the process incarnation it ran as (ops.node): that one's key is its own."""
    previous = _killed_node(peers, "x1", ttl=30)
    system = Layout(tmp_path / "data").system_dir
    system.mkdir(parents=True)
    (system / INCARNATION_FILE).write_text(json.dumps({"node": "x1", "incarnation": previous}))
    started = time.monotonic()
    Server.build(_settings(peers, tmp_path, "x1")).close()
    assert time.monotonic() - started < 15  # not the 30 s the dead lease has left


@pytest.mark.parametrize(
    "url",
    [
        "notaurl",
        "ftp://x",
        "http://",
        "http://h:",
        "http://h:0",
        "http://h:99999",
        "http://u@h:1",
        "http://h/p",
        "http://h?q",
    ],
)
def test_a_node_url_that_is_no_http_origin_is_refused(url: str) -> None:
    with pytest.raises(BadRequest, match="node_url must be an http\\(s\\)://host\\[:port\\] URL"):
        Settings.load(environ={}, cluster_etcd="127.0.0.1:2379", node_url=url)


@pytest.mark.parametrize(
    "endpoints", ["https://e:2379", "ftp://e", "e:port", "e/p", "127.0.0.1:2379,http://"]
)
def test_an_etcd_endpoint_that_is_no_plain_http_address_is_refused(endpoints: str) -> None:
    with pytest.raises(BadRequest, match="cluster_etcd: each etcd endpoint must be http://host"):
        Settings.load(environ={}, cluster_etcd=endpoints, node_url="http://n1:8080")


def test_good_cluster_urls_are_taken(tmp_path: Path) -> None:
    for url in ("http://n1:8080", "https://n1.example", "http://[::1]:8080", "http://10.0.0.1:8081"):
        config = Settings.load(environ={}, cluster_etcd="e1:2379, http://e2", node_url=url).cluster_config()
        assert config is not None and config.node_url == url
    config = Settings.load(environ={}, cluster_etcd="e1", host="::1", port=8081).cluster_config()
    assert config is not None and config.node_url == "http://[::1]:8081"


def test_a_bad_node_url_stops_serve_with_a_usage_error(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "ops", "serve", "--cluster-etcd", "127.0.0.1:1", "--node-url", "notaurl"]
    command += ["--data-dir", str(tmp_path / "data")]
    refused = run_command(
        command, cwd=tmp_path, timeout=60, env={**os.environ, "SQLFLEET_ADMIN_KEY": "k" * 32}
    )
    assert refused.returncode == 2, refused.stderr
    assert "node_url must be an http(s)://host[:port] URL, not 'notaurl'" in refused.stderr


def test_serve_with_a_live_nodes_id_exits_with_a_usage_error(peers: Peers, tmp_path: Path) -> None:
    peers.start("x1", ttl=TTL, ownership=False)
    command = [sys.executable, "-m", "ops", "serve", "--cluster-etcd", ",".join(peers.etcd.endpoints)]
    command += ["--cluster-name", peers.name, "--cluster-lease-ttl", str(TTL), "--node-id", "x1"]
    command += ["--node-url", DUPLICATE, "--data-dir", str(tmp_path / "data")]
    command += ["--replica-url", (tmp_path / "replica").as_uri(), "--port", "0"]
    refused = run_command(
        command, cwd=tmp_path, timeout=60, env={**os.environ, "SQLFLEET_ADMIN_KEY": "k" * 32}
    )
    assert refused.returncode == 2, refused.stderr
    assert "node id x1 is in use by a live node at http://x1.invalid:8080" in refused.stderr
    assert "Traceback" not in refused.stderr
