"""Cluster fixtures: real etcd members (tests.support.etcd) and in-process cluster nodes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster.peers import Peers
from tests.support.etcd import EtcdCluster, etcd, etcd3

__all__ = ["etcd", "etcd3", "peers", "peers3"]


@pytest.fixture
def peers(etcd: EtcdCluster) -> Iterator[Peers]:
    """Start cluster nodes on the test's one-member etcd; every one is stopped at the end."""
    with Peers(etcd) as made:
        yield made


@pytest.fixture
def peers3(etcd3: EtcdCluster) -> Iterator[Peers]:
    with Peers(etcd3) as made:
        yield made
