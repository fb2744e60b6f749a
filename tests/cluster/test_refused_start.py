"""A cluster node whose start is refused (its replica prefix is another cluster's or a single
server's, its data dir is in use) refuses before it registers: it leaves nothing in etcd, so no
slot is given to it and nobody takes it over later."""

from __future__ import annotations

from pathlib import Path

import pytest

from backups.local_replica import LocalReplica
from backups.sealed_replica import SealedReplica
from cluster.keys import Keyspace
from ops.node_guard import ForeignReplica
from ops.server import Server
from ops.settings import Settings
from tenants.errors import DataDirLocked
from tenants.layout import DataDirLock, Layout
from tests.cluster.admin import listing
from tests.cluster.peers import Peers


def test_a_refused_start_leaves_nothing_in_etcd(peers: Peers, tmp_path: Path) -> None:
    single = SealedReplica(LocalReplica(tmp_path / "replica"), None)
    single.put("segments/1764000000000-abc-00000001.seg", b"a single server's")

    def start(data_dir: Path) -> None:
        settings = Settings.load(
            environ={},
            data_dir=data_dir,
            admin_key="k" * 32,
            cluster_etcd=",".join(peers.etcd.endpoints),
            cluster_name=peers.name,
            node_id="x3",
            replica_url=(tmp_path / "replica").as_uri(),
        )
        Server.build(settings).close()

    with pytest.raises(ForeignReplica, match="a single server's backups"):
        start(tmp_path / "data")
    held = DataDirLock(Layout(tmp_path / "held"))
    held.acquire()
    try:
        with pytest.raises(DataDirLocked):
            start(tmp_path / "held")
    finally:
        held.release()
    assert listing(peers, Keyspace(peers.name).root) == {}
